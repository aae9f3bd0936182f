"""YAML read with bounded time and memory: each document's node graph is sized with its aliases
expanded before anything builds it, so an alias bomb or a self-referencing alias is one line."""

from __future__ import annotations

from trainer.errors import UsageError

# Bounds that keep `trainer check` and `trainer search` fast and small on any input.
MAX_YAML_NODES = 100_000  # an Experiment has a few hundred


def load_documents(text: str, source: str) -> list:
    """yaml.safe_load_all, but every document's node graph is sized with its aliases expanded first:
    an alias bomb ("billion laughs") or a self-referencing alias is refused before anything walks it."""
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        documents = []
        while loader.check_node():
            node = loader.get_node()
            expanded_size(node, source)
            documents.append(loader.construct_document(node))
        return documents
    finally:
        loader.dispose()


def expanded_size(root, source: str) -> int:
    """Nodes in the document once every alias is replaced by a copy of what it names; UsageError when
    that exceeds MAX_YAML_NODES or an alias refers to a node that contains it. Each node is sized once
    (memoized by identity), so this takes time linear in the YAML text, however big the expansion."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        children = node_children(node)
        if children_done:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[key] > MAX_YAML_NODES:
                raise UsageError(f"{source}: YAML too big once its aliases are expanded (more than "
                                 f"{MAX_YAML_NODES} values; an alias bomb?)")
            continue
        if key in open_nodes:
            raise UsageError(f"{source}: YAML alias that refers to itself (line {node.start_mark.line + 1})")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in sizes)
    return sizes[id(root)]


def node_children(node) -> list:
    import yaml

    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []
