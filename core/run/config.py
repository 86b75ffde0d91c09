"""Layered YAML configs: case defaults < hardware/topology file < overlays < ``--set key=value``.

The defaults file is the schema: a key it does not have is an error, and a value must have the
type of the default (an int where a float is expected is fine; a ``null`` default takes anything).
No config is ever executed as code: YAML is read with a ``yaml.SafeLoader`` that also refuses a
key set twice. Every number must be finite (no NaN, no inf).
"""

import copy
import math
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

import yaml

from chipbench.errors import UserError
from chipbench.util import safeio
from chipbench.util.text import shorten, shown

Config = Dict[str, Any]
CONFIG_FIX = "give a YAML file, or a stream such as --config <(cat file.yaml)"


class DuplicateKeyError(yaml.YAMLError):
    """A mapping that sets the same key twice (YAML would keep the last one in silence)."""

    def __init__(self, key: Any, mark: Any, merged: bool = False) -> None:
        super().__init__("duplicate key {!r}".format(key))
        self.key = key
        self.problem_mark = mark
        self.merged = merged
        """Set by two mappings merged in with ``<<``, not written twice."""
        self.problem = "key {!r} is set twice".format(key)


MAX_YAML_NODES = 2000000
"""The most values (scalars, lists, mappings) one YAML document may expand to, counting each
alias (``*name``) as a copy of what it names: a config holds hundreds; ten levels of ten
aliases of aliases (a "billion laughs" bomb of a few hundred bytes) would be 10**10, and every
later walk over the config (its checks, its JSON in spec.json) would take that long."""


class AliasBombError(yaml.YAMLError):
    """A document that expands to more than :data:`MAX_YAML_NODES` values through its aliases."""

    def __init__(self, limit: int, mark: Any) -> None:
        super().__init__("expands to over {} values".format(limit))
        self.limit = limit
        self.problem_mark = mark
        self.problem = ("expands to over {:,} values, each alias (*name) counted as a copy of "
                        "what it names".format(limit))


def _children(node: Any) -> List[Any]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def check_expansion(root: Any, limit: int = MAX_YAML_NODES) -> int:
    """How many values the composed YAML document ``root`` expands to, each alias counted as a
    copy of its anchor's node; :class:`AliasBombError` as soon as that passes ``limit``. Each
    node is sized once (aliases share their node), so this takes time in the document's own
    size, never in its expansion. A node that contains itself counts its own alias as one."""
    sizes: Dict[int, int] = {}
    active = set()
    stack: List[Tuple[Any, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            active.discard(key)
            size = 1 + sum(sizes.get(id(child), 1) for child in _children(node))
            if size > limit:
                raise AliasBombError(limit, node.start_mark)
            sizes[key] = size
            continue
        if key in sizes or key in active:
            continue
        active.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node)
                     if id(child) not in sizes and id(child) not in active)
    return sizes.get(id(root), 1)


MERGE_TAG = "tag:yaml.org,2002:merge"


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys in a mapping, a key that two merged
    mappings (``<<: *a`` twice, or ``<<: [*a, *b]``) both set and the mapping itself does not,
    and a document that expands past :data:`MAX_YAML_NODES` values through its aliases."""

    def construct_document(self, node: Any) -> Any:
        check_expansion(node)
        return super().construct_document(node)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:  # `<<: *base`: merged by the base class
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the base class reports it
                break
            if duplicate:
                raise DuplicateKeyError(key, key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def flatten_mapping(self, node: Any) -> None:
        """Refuse a key that two of ``node``'s merged mappings set (YAML would keep one of them
        in silence), then merge as YAML does: the mapping's own keys win over merged ones."""
        own = {(k.tag, k.value) for k, _ in node.value
               if k.tag != MERGE_TAG and isinstance(k, yaml.ScalarNode)}
        setters: Dict[Tuple[str, str], int] = {}
        sources = set()
        for merge_key, value in list(node.value):
            if merge_key.tag != MERGE_TAG:
                continue
            subnodes = value.value if isinstance(value, yaml.SequenceNode) else [value]
            for sub in subnodes:
                if not isinstance(sub, yaml.MappingNode) or id(sub) in sources:
                    continue  # not a mapping: the base class says so; the same one twice
                sources.add(id(sub))
                self.flatten_mapping(sub)
                for key_node in {(k.tag, k.value): k for k, _ in sub.value
                                 if isinstance(k, yaml.ScalarNode)}.values():
                    name = (key_node.tag, key_node.value)
                    if name in setters and name not in own and setters[name] != id(sub):
                        raise DuplicateKeyError(self.construct_object(key_node),
                                                merge_key.start_mark, merged=True)
                    setters[name] = id(sub)
        super().flatten_mapping(node)


def load_yaml(path: Path) -> Config:
    """Read one YAML mapping; a missing, unreadable or broken file, or a key set twice, is a
    one-line error. ``path`` is a regular file (a link to one is followed) or a stream the user
    gave (``--config <(cat a.yaml)``), at most :data:`chipbench.util.safeio.CONFIG_LIMIT` bytes; a
    FIFO, a device, a folder or a link that loops is refused naming what it is (never blocks)."""
    path = Path(path)
    try:
        text = safeio.read_bytes(path, safeio.CONFIG_LIMIT, follow=True, what="config",
                                 fix=CONFIG_FIX, pipes=True).decode("utf-8")
        data = yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader
    except OSError as exc:
        raise UserError("cannot read config {} ({})".format(path, exc.strerror),
                        "check the path") from None
    except AliasBombError as exc:
        raise UserError("config {} {} (line {})".format(path, exc.problem,
                                                        exc.problem_mark.line + 1),
                        "write the values out: a config holds a few levels of keys") from None
    except RecursionError:
        raise UserError("config {} nests too deeply to read".format(path),
                        "flatten it: a config is a few levels of keys") from None
    except UnicodeDecodeError as exc:
        raise UserError("config {} is not UTF-8 text (byte {} is {:#04x})".format(
            path, exc.start, exc.object[exc.start]), "give a YAML text file") from None
    except DuplicateKeyError as exc:
        if exc.merged:
            raise UserError("config {} sets key {!r} twice (line {}: two mappings merged with "
                            "`<<` both set it)".format(path, exc.key, exc.problem_mark.line + 1),
                            "keep it in one of them, or set it in the mapping itself: YAML "
                            "would silently take one") from None
        raise UserError("config {} sets key {!r} twice (line {})".format(
            path, exc.key, exc.problem_mark.line + 1),
            "keep one of them: YAML would silently drop the first") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = " at line {}".format(mark.line + 1) if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        if isinstance(exc, yaml.reader.ReaderError):  # a control character, not YAML text
            char = exc.character
            problem = "character {} at offset {} is not allowed".format(
                "{:#04x}".format(char) if isinstance(char, int) else repr(char), exc.position)
        raise UserError("config {} is not valid YAML{}: {}".format(path, where, problem),
                        "fix the YAML syntax there") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError("config {} must be a mapping of keys, not a {}".format(
            path, type(data).__name__), "write it as `key: value` lines")
    check_plain(data, str(path))
    return data


def check_plain(layer: Config, source: str) -> None:
    """Refuse what no config may hold, in any layer (a case's own defaults included): a key that
    is not a name, a value that is not plain YAML (bytes from ``!!binary``, a timestamp, a set),
    a number that is not finite, an integer beyond 64 bits, nesting hundreds of levels deep."""
    try:
        _check_mapping(layer, source, "")
    except RecursionError:
        raise UserError("config {} nests too deeply to read".format(source),
                        "flatten it: a config is a few levels of keys") from None


def _check_mapping(layer: Config, source: str, prefix: str) -> None:
    for key, value in layer.items():
        if not isinstance(key, str) or not key.strip() or "." in key:
            raise UserError("config {} has key {} under '{}', which is not a name".format(
                source, shown(key), _key(prefix.rstrip(".")) or "the top level"),
                "use names without dots as keys (quote a number: '1')")
        _check_value(value, prefix + key, source)


def _check_value(value: Any, dotted: str, source: str) -> None:
    if isinstance(value, dict):
        _check_mapping(value, source, dotted + ".")
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_value(item, dotted, source)
    elif isinstance(value, float) and not math.isfinite(value):
        raise UserError("config key '{}' in {} must be a finite number, not {}".format(
            _key(dotted), source, shown(value)), "give a finite value")
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
        raise UserError("config key '{}' in {} is out of range: {}".format(
            _key(dotted), source, shown(value)), "give a value below 2**63")
    elif value is not None and not isinstance(value, (bool, int, float, str)):
        raise UserError("config key '{}' in {} holds a {} ({}), which a config cannot hold".format(
            _key(dotted), source, type(value).__name__, shown(value)),
            "write a number, a string, true/false, a list or a mapping (quote it to keep it "
            "as text)")


KEY_LIMIT = 120
"""Characters of a dotted config key in an error line (a key can be as long as its file)."""


def _key(dotted: str) -> str:
    """A dotted config key as an error line shows it: cut in the middle, saying how much."""
    return shorten(dotted, KEY_LIMIT)


def _type_ok(default: Any, value: Any) -> bool:
    if default is None:
        return True  # a null default takes anything: the case checks such keys
    if value is None:
        return False
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def merge(base: Config, layer: Config, source: str, schema: Optional[Config] = None,
          prefix: str = "") -> Config:
    """Return ``base`` updated by ``layer``; keys and types are checked against ``schema``."""
    schema = base if schema is None else schema
    merged = copy.deepcopy(base)
    for key, value in layer.items():
        dotted = prefix + str(key)
        if key not in schema:
            known = ", ".join(sorted(prefix + str(k) for k in schema))
            raise UserError("unknown config key '{}' in {}".format(_key(dotted), source),
                            "known keys here: {}".format(known))
        default = schema[key]
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise UserError("config key '{}' in {} must be a mapping".format(_key(dotted), source),
                                "give its sub-keys, e.g. {}.{}".format(_key(dotted),
                                                                      next(iter(default), "")))
            merged[key] = merge(merged.get(key) or {}, value, source, default, dotted + ".")
            continue
        if not _type_ok(default, value):
            raise UserError(
                "config key '{}' in {} must be {}, not {}".format(
                    _key(dotted), source, _type_name(default), shown(value)),
                "fix the value")
        _check_value(value, dotted, source)  # layers built in code too (overlays, a spec)
        if isinstance(default, float) and isinstance(value, int):
            value = float(value)
        merged[key] = value
    return merged


MAX_INT = 2**63 - 1
"""The largest integer a config may hold (torch and numpy take 64-bit integers)."""


def _type_name(default: Any) -> str:
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, float):
        return "a number"
    if isinstance(default, int):
        return "an integer"
    if isinstance(default, (list, tuple)):
        return "a list"
    return "a " + type(default).__name__


def parse_set(items: Iterable[str]) -> Config:
    """``["train.lr=0.02", "model.backbone_weights=none"]`` -> nested mapping (values read as YAML)."""
    layer: Config = {}
    for item in items:
        if "=" not in item:
            raise UserError("--set {!r} is not key=value".format(item),
                            "write it as --set train.lr=0.02")
        key, raw = item.split("=", 1)
        try:
            value = yaml.load(raw, Loader=StrictLoader) if raw.strip() else ""  # noqa: S506
        except DuplicateKeyError as exc:
            raise UserError("--set {} sets key {!r} twice".format(shown(item), exc.key),
                            "keep one of them") from None
        except (yaml.YAMLError, ValueError):  # not YAML, or an integer of thousands of digits
            value = raw
        except RecursionError:
            raise UserError("--set {} nests too deeply to read".format(shown(item)),
                            "give a plain value or a short list") from None
        value = _number_or_same(value)
        node = layer
        parts = _set_key_parts(item, key)
        for depth, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError("--set {} gives a sub-key of '{}', which another --set sets to "
                                "{}".format(shown(item), ".".join(parts[:depth + 1]), shown(node)),
                                "drop one of the two")
        if isinstance(node.get(parts[-1]), dict) and not isinstance(value, dict):
            raise UserError("--set {} replaces the sub-keys that another --set gives '{}'".format(
                shown(item), ".".join(parts)), "drop one of the two")
        node[parts[-1]] = value
    check_plain(layer, "--set")
    return layer


def _set_key_parts(item: str, key: str) -> List[str]:
    """The names of ``--set``'s dotted ``key`` (spaces around it dropped); refused in one line:
    an empty key, a leading or trailing dot, two dots in a row, a name with spaces around it
    (``train..lr`` is not ``train.lr``: a mistyped key is never guessed at)."""
    fix = "write the key as names joined by single dots: --set train.lr=0.02"
    key = key.strip()
    if not key:
        raise UserError("--set {} has an empty key".format(shown(item)), fix)
    parts = key.split(".")
    if any(not part or part != part.strip() for part in parts):
        raise UserError("--set {} has key {!r}, with an empty name or spaces between its dots"
                        .format(shown(item), key), fix)
    return parts


def _number_or_same(value: Any) -> Any:
    """YAML 1.1 reads ``1e8`` as a string; on the command line it means a number."""
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") else value
        except ValueError:
            return value
    return value


def resolve(defaults: Config, layers: List[Tuple[str, Config]]) -> Config:
    """Apply ``(source, layer)`` pairs in order over ``defaults``; each is checked against them."""
    config = copy.deepcopy(defaults)
    for source, layer in layers:
        config = merge(config, layer, source, schema=defaults)
    return config


def flatten(config: Config, prefix: str = "") -> Dict[str, Any]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}``."""
    flat: Dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, prefix + key + "."))
        else:
            flat[prefix + key] = value
    return flat
