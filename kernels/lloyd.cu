// Lloyd's algorithm for every segment of a batch in one launch: the fused twin of lloyd.lloyd.
//
// NEVER RUN ON A GPU YET. Opt-in (GPUCOMPRESS_FUSED=1, see fused.py); tests/test_cupy_parity.py
// compares it with the array code on a device; here tests/test_fused.py runs this very source
// compiled as C++ with one host thread per CUDA thread (kernels/cuda_emulation.h).
//
// One block per segment, its threads strided over the clusters. A step is the array code's
// step, operation for operation, in integers only (so parity holds by construction):
//   border j (0 < j < k) = upper bound of tag + ((c[j-1] + c[j]) >> 1) + bias in the sorted keys
//     (searched in the segment's own range [start, stop): the tags make that the same position
//     as lloyd.cluster_borders' searchsorted over all keys, side="right");
//   count_j = border j+1 - border j; sum_j = prefix[border j+1] - prefix[border j] (uint64,
//     wrapping, read as int64: exact, see fixedpoint.py);
//   c[j] = floor((2 sum_j + count_j) / (2 count_j)) where count_j > 0, else unchanged;
// a segment stops at the first step that changes none of its centroids (not counted), or after
// max_iter counted steps: iterations[s] as lloyd.lloyd returns it.
//
// Shared memory: (2k + 1) int64 (the centroids and the borders); fused.py launches it for
// k <= MAX_FUSED_K only.

extern "C" __global__ void lloyd_segments(const long long* keys, const unsigned long long* prefix,
                                          const long long* offsets, long long* centroids,
                                          long long* iterations, const int k, const int max_iter,
                                          const int key_shift, const long long key_bias) {
    extern __shared__ long long shared[];
    long long* current = shared;     // k centroids of this segment
    long long* borders = shared + k; // k + 1 sorted positions
    __shared__ int changed;
    const long long segment = blockIdx.x;
    const long long start = offsets[segment];
    const long long stop = offsets[segment + 1];
    const long long tag = segment << key_shift;
    for (int j = threadIdx.x; j < k; j += blockDim.x) {
        current[j] = centroids[segment * k + j];
    }
    __syncthreads();
    long long steps = 0;
    for (int step = 0; step < max_iter; ++step) {
        for (int j = threadIdx.x; j <= k; j += blockDim.x) {
            long long border;
            if (j == 0) {
                border = start;
            } else if (j == k) {
                border = stop;
            } else {
                const long long query = tag + ((current[j - 1] + current[j]) >> 1) + key_bias;
                long long low = start, high = stop; // first position whose key > query
                while (low < high) {
                    const long long middle = low + ((high - low) >> 1);
                    if (keys[middle] <= query) {
                        low = middle + 1;
                    } else {
                        high = middle;
                    }
                }
                border = low;
            }
            borders[j] = border;
        }
        if (threadIdx.x == 0) {
            changed = 0;
        }
        __syncthreads(); // borders complete, before any centroid moves
        for (int j = threadIdx.x; j < k; j += blockDim.x) {
            const long long count = borders[j + 1] - borders[j];
            if (count > 0) {
                const long long sum = (long long)(prefix[borders[j + 1]] - prefix[borders[j]]);
                const long long numerator = 2 * sum + count;
                const long long denominator = 2 * count;
                long long mean = numerator / denominator; // C truncates: make it floor, as NumPy's //
                if ((numerator % denominator != 0) && (numerator < 0)) {
                    mean -= 1;
                }
                if (mean != current[j]) {
                    current[j] = mean;
                    changed = 1;
                }
            }
        }
        __syncthreads(); // every write of this step (and of changed) seen by all threads
        if (!changed) {
            break;
        }
        ++steps;
        __syncthreads(); // no thread resets changed before all have read it
    }
    for (int j = threadIdx.x; j < k; j += blockDim.x) {
        centroids[segment * k + j] = current[j];
    }
    if (threadIdx.x == 0) {
        iterations[segment] = steps;
    }
}
