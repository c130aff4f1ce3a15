// Runs a CUDA kernel's source on the host: one std::thread per CUDA thread, blocks one after
// another, __syncthreads() a barrier of the block's threads, shared memory one host buffer (blocks
// never overlap). Enough for kernels that use only blockIdx.x, threadIdx.x, blockDim.x,
// __syncthreads() and shared memory; tests/test_fused.py compiles kernels/*.cu with it (g++),
// after turning `extern __shared__` into `extern` (C++ has no extern static).
#pragma once
#include <barrier>
#include <thread>
#include <vector>

struct EmulatedDim {
    unsigned int x = 0, y = 0, z = 0;
};
thread_local EmulatedDim threadIdx;
EmulatedDim blockIdx, blockDim;
std::barrier<>* emulated_barrier = nullptr;

#define __global__
#define __shared__ static
#define __syncthreads() emulated_barrier->arrive_and_wait()

extern "C" {
long long shared[1 << 16]; // the dynamic shared memory of the block that runs
}

// Launch kernel(args...) on a grid of `blocks` blocks of `threads` threads.
template <typename Kernel, typename... Args>
void emulated_launch(unsigned int blocks, unsigned int threads, Kernel kernel, Args... args) {
    blockDim.x = threads;
    for (unsigned int block = 0; block < blocks; ++block) {
        blockIdx.x = block;
        std::barrier<> barrier(threads);
        emulated_barrier = &barrier;
        std::vector<std::thread> pool;
        for (unsigned int thread = 0; thread < threads; ++thread) {
            pool.emplace_back([=] {
                threadIdx.x = thread;
                kernel(args...);
            });
        }
        for (auto& worker : pool) {
            worker.join();
        }
    }
}
