"""What each checkpoint key of a SavedModel is, from its object graph.

A TensorFlow checkpoint stores each variable once, under the first path the
saver found from the root object (`variables/0`, `d1/_kernel`, and, for a
compiled Keras `Sequential` saved with `tf.saved_model.save`,
`optimizer/_trainable_variables/0`: the optimizer holds the model's own
variables too, and its path is the shorter). The key therefore cannot tell
a layer's kernel from an optimizer slot. The object graph
(`trackable_object_graph`, stored in the checkpoint) can: a variable is the
model's when it can be reached from the root without passing through an
optimizer; otherwise it is optimizer state.

An object counts as an optimizer when an edge named `optimizer` leads to it,
when it has a child named `_iterations` or `iter` (Keras 3 and tf_keras
optimizers), or when it lists slot variables; slot variables are optimizer
state wherever they hang.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .weights import variable_names

OPTIMIZER_EDGES = ("optimizer",)
OPTIMIZER_CHILDREN = ("_iterations", "iter")


@dataclass
class KeyRoles:
    """Per checkpoint key: whether it is optimizer state, and the names it answers to.

    optimizer: the keys that are optimizer state. names: {key: variable names}
    (the variable's own name, e.g. "sequential/dense/kernel", and that name
    without its model prefix, "dense/kernel").
    """

    optimizer: set[str] = field(default_factory=set)
    names: dict[str, tuple[str, ...]] = field(default_factory=dict)


def key_roles(graph) -> KeyRoles:
    """Return the KeyRoles of a parsed TrackableObjectGraph message.

    Never raises on odd graphs: child ids out of range are ignored, so an
    untrusted object graph can at worst mark keys wrongly, never crash.
    """
    nodes = graph.nodes
    count = len(nodes)
    optimizers = set()
    slots = set()
    for node in nodes:
        for child in node.children:
            if child.local_name in OPTIMIZER_EDGES and 0 <= child.node_id < count:
                optimizers.add(child.node_id)
        for slot in node.slot_variables:
            slots.add(slot.slot_variable_node_id)
    for index, node in enumerate(nodes):
        if node.slot_variables or any(child.local_name in OPTIMIZER_CHILDREN for child in node.children):
            optimizers.add(index)
    model = set()
    if count and 0 not in optimizers:
        model.add(0)
        queue = deque([0])
        while queue:
            for child in nodes[queue.popleft()].children:
                target = child.node_id
                if 0 <= target < count and target not in model and target not in optimizers:
                    model.add(target)
                    queue.append(target)
    roles = KeyRoles()
    for index, node in enumerate(nodes):
        for attribute in node.attributes:
            key = attribute.checkpoint_key
            if index not in model or index in slots:
                roles.optimizer.add(key)
            if attribute.full_name:
                roles.names[key] = variable_names(attribute.full_name)
    return roles
