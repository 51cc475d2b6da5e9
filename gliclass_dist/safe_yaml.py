"""YAML for job specs and label-set files: PyYAML's safe loader without anchors and aliases.

A few hundred bytes of nested aliases ("billion laughs") expand to gigabytes once the data is walked;
specs never need them, so the loader refuses the first anchor (``&a``) or alias (``*a``) it meets.
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["YamlAliasError", "dump_yaml", "load_yaml"]


class YamlAliasError(ValueError):
    """The YAML text uses an anchor or an alias; the message says where."""


class _NoAliasLoader(yaml.SafeLoader):
    what = "job specs"

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            kind = "alias *" if isinstance(event, yaml.AliasEvent) else "anchor &"
            raise YamlAliasError(
                f"anchors and aliases are not allowed in {self.what} "
                f"({kind}{event.anchor} at line {event.start_mark.line + 1})"
            )
        return super().compose_node(parent, index)


def load_yaml(text: str, what: str = "job specs") -> Any:
    """``yaml.safe_load(text)``, but ``YamlAliasError`` (naming ``what``) on any anchor or alias."""
    loader = _NoAliasLoader(text)
    loader.what = what
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


class _NoAliasDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # an object referenced twice is written twice, so ``load_yaml`` reads the output back


def dump_yaml(data: Any) -> str:
    """``yaml.safe_dump(data, sort_keys=False)`` that never writes anchors or aliases."""
    return yaml.dump(data, Dumper=_NoAliasDumper, sort_keys=False)
