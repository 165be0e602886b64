"""trainer/conf composed with hydra overrides: hydra.compose's own result, without importing hydra
where this module can vouch for it (importing hydra is ~0.1 s of CPU, the largest cost of a
`slmjobs launch --dry-run`; OmegaConf, which does the merging here as it does inside hydra, is a
third of that).

    compose_quickly(overrides) -> dict | None    None: not a form vouched for here; ask hydra
    compose_with_hydra(overrides) -> dict        hydra.compose itself (raises hydra's errors)

Vouched for: a primary config whose defaults list names `group: option` entries, `_self_` and
hydra's own `override hydra/...` entries; group configs without a defaults list, in their group's
package or `# @package _global_`; overrides `key=value`, `+key=value`, `++key=value`, `~key` and
`~key=value` on dotted keys, and `group=option` for a group of that list, with any value of hydra's
grammar but a function or a sweep: primitives (hydra's typing of 1, 1.0, true, null, ...),
quoted strings, interpolations, escapes, lists and dicts (parse_override is hydra's grammar for
those, token for token). The composition is hydra's: the same files loaded with OmegaConf.load,
merged in the same order, then struct mode and each override applied with the OmegaConf calls
hydra's ConfigLoaderImpl makes.

Everything else (another group override, a hydra.* key, key@package, a function, a sweep, an
override that does not parse, a merge or an interpolation that fails) is left to hydra, so the
result and every error message are hydra's own. tests/trainer/test_compose.py composes every
preset with each form both ways, and checks this parser against hydra's on random overrides.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple, Optional

CONF_DIR = Path(__file__).resolve().parent / 'conf'
PRIMARY = 'config'


class Override(NamedTuple):
    kind: str  # 'change' | 'add' (+) | 'force_add' (++) | 'delete' (~)
    key: str
    value: Any


class Decline(Exception):
    """Not a form this module vouches for: hydra decides."""


# ---------------------------------------------------------------------------------------------
# Overrides: hydra's grammar (hydra/grammar/OverrideLexer.g4, OverrideParser.g4) minus functions,
# sweeps, key@package and group/paths
# ---------------------------------------------------------------------------------------------

_KEY = r'[A-Za-z_][A-Za-z0-9_-]*(?:\.[A-Za-z_][A-Za-z0-9_-]*)*'
# '=' takes the blanks after it (the key mode's EQUAL: '=' WS?)
_OVERRIDE = re.compile(rf'(?P<prefix>~|\+\+|\+)?(?P<key>{_KEY})(?:=[ \t]*(?P<value>.*))?', re.DOTALL)

_INT_UNSIGNED = r'(?:0|[1-9](?:_?[0-9])*)'
_DIGITS = r'[0-9](?:_?[0-9])*'
_POINT_FLOAT = rf'(?:{_INT_UNSIGNED}?\.{_DIGITS}|{_INT_UNSIGNED}\.)'
_EXPONENT_FLOAT = rf'(?:{_POINT_FLOAT}|{_INT_UNSIGNED})[eE][+-]?{_DIGITS}'
# The value mode's tokens in the lexer's order: the longest match wins, the earlier on a tie.
_TOKENS = [(kind, re.compile(pattern, re.DOTALL)) for kind, pattern in (
    ('POPEN', r'[ \t]*\([ \t]*'),
    ('COMMA', r'[ \t]*,[ \t]*'),
    ('PCLOSE', r'[ \t]*\)'),
    ('BRACKET_OPEN', r'\[[ \t]*'),
    ('BRACKET_CLOSE', r'[ \t]*\]'),
    ('BRACE_OPEN', r'\{[ \t]*'),
    ('BRACE_CLOSE', r'[ \t]*\}'),
    ('COLON', r'[ \t]*:[ \t]*'),
    ('EQUAL', r'[ \t]*=[ \t]*'),
    ('FLOAT', rf'[+-]?(?:{_EXPONENT_FLOAT}|{_POINT_FLOAT}|[Ii][Nn][Ff]|[Nn][Aa][Nn])'),
    ('INT', rf'[+-]?{_INT_UNSIGNED}'),
    ('BOOL', r'[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]'),
    ('NULL', r'[Nn][Uu][Ll][Ll]'),
    ('UNQUOTED_CHAR', r'[/\-\\+.$%*@?|]'),
    ('ID', r'[a-zA-Z_][a-zA-Z0-9_-]*'),
    ('ESC', r'(?:\\[\\()\[\]{}:=, \t])+'),
    ('WS', r'[ \t]+'),
    # a quote ends the value where an even number of backslashes (or none) precedes it
    ('QUOTED_VALUE', r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\''),
    ('INTERPOLATION', r'\$\{[^}]+\}'),
)]
_DICT_KEY = {'ID', 'NULL', 'INT', 'FLOAT', 'BOOL', 'UNQUOTED_CHAR', 'ESC', 'WS'}
_PRIMITIVE = _DICT_KEY | {'COLON', 'INTERPOLATION'}
_TYPED = {'INT': int, 'FLOAT': float, 'NULL': lambda _: None, 'BOOL': lambda text: text.lower() == 'true',
          'ESC': lambda text: text[1::2]}  # a token alone; any other kind is its text
_ESCAPED_QUOTE = {"'": re.compile(r"(\\)+'"), '"': re.compile(r'(\\)+"')}


def parse_override(text: str) -> Optional[Override]:
    """The override as hydra's parser reads it (Override.value(): quoted strings as str), or None
    where this is not a form vouched for here."""
    match = _OVERRIDE.fullmatch(text)
    if not match:
        return None
    prefix, key, value = match['prefix'], match['key'], match['value']
    kind = {None: 'change', '+': 'add', '++': 'force_add', '~': 'delete'}[prefix]
    if value is None:
        return Override(kind, key, None) if kind == 'delete' else None  # `~key`, as `~key=null`
    try:
        return Override(kind, key, _parse_value(_tokens(value)))
    except Decline:
        return None


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens, at = [], 0
    while at < len(text):
        best = max(((kind, m.group()) for kind, pattern in _TOKENS if (m := pattern.match(text, at))),
                   key=lambda token: len(token[1]), default=None)  # max keeps the first of a tie
        if best is None or best[0] in ('POPEN', 'PCLOSE', 'EQUAL'):  # a function (or no token)
            raise Decline
        tokens.append(best)
        at += len(best[1])
    return tokens


def _parse_value(tokens: list[tuple[str, str]]) -> Any:
    if not tokens:
        return ''  # `key=`
    value, at = _element(tokens, 0)
    if at != len(tokens):  # a sweep (a,b) or something hydra will refuse
        raise Decline
    return value


def _kind(tokens, at) -> Optional[str]:
    return tokens[at][0] if at < len(tokens) else None


def _element(tokens, at) -> tuple[Any, int]:
    if _kind(tokens, at) == 'BRACKET_OPEN':
        return _container(tokens, at + 1, 'BRACKET_CLOSE', _element, list)
    if _kind(tokens, at) == 'BRACE_OPEN':
        return _container(tokens, at + 1, 'BRACE_CLOSE', _dict_item, dict)
    if _kind(tokens, at) == 'QUOTED_VALUE':
        return _unquote(tokens[at][1]), at + 1
    return _primitive(tokens, at, _PRIMITIVE)


def _container(tokens, at, close, item, build) -> tuple[Any, int]:
    items = []
    if _kind(tokens, at) != close:
        while True:
            value, at = item(tokens, at)
            items.append(value)
            if _kind(tokens, at) != 'COMMA':
                break
            at += 1
    if _kind(tokens, at) != close:
        raise Decline
    return build(items), at + 1


def _dict_item(tokens, at) -> tuple[tuple[Any, Any], int]:
    key, at = _primitive(tokens, at, _DICT_KEY)
    if _kind(tokens, at) != 'COLON':
        raise Decline
    value, at = _element(tokens, at + 1)
    return (key, value), at


def _primitive(tokens, at, kinds) -> tuple[Any, int]:
    """hydra's _createPrimitive: blanks around dropped; one token typed, several joined as text."""
    end = at
    while _kind(tokens, end) in kinds:
        end += 1
    run = tokens[at:end]
    if run and run[0][0] == 'WS':
        run = run[1:]
    if run and run[-1][0] == 'WS':
        run = run[:-1]
    if not run:  # nothing, or blanks only: hydra refuses it
        raise Decline
    if len(run) > 1:
        return ''.join(text[1::2] if kind == 'ESC' else text for kind, text in run), end
    kind, text = run[0]
    return _TYPED.get(kind, str)(text), end


def _unquote(text: str) -> str:
    """hydra's _unescape_quoted_string: only backslashes before a quote are escapes."""
    pattern, text, parts = _ESCAPED_QUOTE[text[0]], text[1:], []
    while match := pattern.search(text):
        start, stop = match.span()
        parts += [text[:start], text[start + 1:stop:2]]
        text = text[stop:]
    return ''.join(parts) + text[:-1]


# ---------------------------------------------------------------------------------------------
# The composition
# ---------------------------------------------------------------------------------------------

def compose_quickly(overrides: list[str], conf_dir: Path = CONF_DIR) -> Optional[dict]:
    """conf_dir/config.yaml composed with these overrides, resolved, exactly as hydra.compose +
    OmegaConf.to_container(resolve=True) give it; None where this module does not vouch for it."""
    parsed = [parse_override(text) for text in overrides]
    if None in parsed or any(o.key == 'hydra' or o.key.startswith('hydra.') for o in parsed):
        return None
    try:
        choices = _choices(conf_dir, [o for o in parsed if (conf_dir / o.key).is_dir()])
        return _compose(conf_dir, choices, [o for o in parsed if not (conf_dir / o.key).is_dir()])
    except Exception:  # a merge, an override or an interpolation that fails: hydra's to say how
        return None


def _choices(conf_dir: Path, group_overrides: list[Override]) -> list[tuple[Optional[str], str]]:
    """The primary config's defaults list with the group overrides applied."""
    defaults = _defaults(conf_dir)
    chosen = {o.key: o.value for o in group_overrides}
    if len(chosen) != len(group_overrides) or not all(
            o.kind == 'change' and isinstance(o.value, str) and o.key in dict(defaults)
            for o in group_overrides):
        raise Decline
    choices = [(group, chosen.get(group, option)) for group, option in defaults]
    if not all(group is None or (conf_dir / group / f'{option}.yaml').is_file() for group, option in choices):
        raise Decline  # hydra names the options there are
    return choices


@lru_cache(maxsize=None)
def _defaults(conf_dir: Path) -> tuple[tuple[Optional[str], str], ...]:
    """The primary config's defaults list as (group, option) in merge order, (None, '_self_')
    for the primary config itself; hydra's own entries left out (its node is not in the result)."""
    import yaml
    entries = (yaml.safe_load((conf_dir / f'{PRIMARY}.yaml').read_text()) or {}).get('defaults') or []
    defaults = []
    for entry in entries:
        if entry == '_self_':
            defaults.append((None, '_self_'))
        elif isinstance(entry, dict) and len(entry) == 1:
            (group, option), = entry.items()
            if group.startswith('override hydra/'):
                continue
            if not (re.fullmatch(r'[A-Za-z_][\w-]*', group) and isinstance(option, str)):
                raise Decline  # optional, @package, a list of options, null: hydra's
            defaults.append((group, option))
        else:
            raise Decline
    if (None, '_self_') not in defaults:
        raise Decline  # where the primary config goes then depends on hydra's version
    return tuple(defaults)


def _compose(conf_dir: Path, choices, value_overrides: list[Override]) -> dict:
    from omegaconf import OmegaConf
    cfg = OmegaConf.create()
    for group, option in choices:
        cfg.merge_with(_load(conf_dir, group, option))  # copies: the cached configs stay as read
    OmegaConf.set_struct(cfg, True)
    for override in value_overrides:
        _apply(cfg, override)
    return OmegaConf.to_container(cfg, resolve=True)


@lru_cache(maxsize=None)  # read once per process: a sweep composes its members from the same files
def _load(conf_dir: Path, group: Optional[str], option: str):
    """One config as hydra embeds it: a group's in its package (the group's name, or the root for
    `# @package _global_`); the primary one without its defaults list and hydra's own node."""
    from omegaconf import OmegaConf, open_dict
    if group is None:
        config = OmegaConf.load(conf_dir / f'{PRIMARY}.yaml')
        with open_dict(config):
            config.pop('defaults', None)
            config.pop('hydra', None)
        return config
    path = conf_dir / group / f'{option}.yaml'
    config = OmegaConf.load(path)
    if 'defaults' in config:
        raise Decline
    package = _package_header(path.read_text())
    if package == '_global_':
        return config
    if package is not None:
        raise Decline
    embedded = OmegaConf.create()
    OmegaConf.update(embedded, group, config, merge=False)
    return embedded


def _package_header(text: str) -> Optional[str]:
    """`# @package X` among the comment lines that open the file (hydra's _get_header_dict)."""
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if not re.match(r'#\s*@', line):
            return None
        words = line.lstrip('#').split()
        if len(words) != 2:
            raise Decline
        if words[0] == '@package':
            return words[1]
    return None


def _apply(cfg, override: Override) -> None:
    """One value override, as hydra's ConfigLoaderImpl._apply_overrides_to_config applies it
    where it succeeds (where it would not, Decline: hydra says why)."""
    from omegaconf import OmegaConf, open_dict
    key, value = override.key, override.value
    if override.kind == 'delete':
        current = OmegaConf.select(cfg, key, throw_on_missing=False)
        if current is None or (value is not None and value != current):
            raise Decline
        parent, _, name = key.rpartition('.')
        with open_dict(cfg):
            del (OmegaConf.select(cfg, parent) if parent else cfg)[name]
    elif override.kind == 'add':
        there = OmegaConf.select(cfg, key, throw_on_missing=False)
        if there is not None and not isinstance(value, (dict, list)):
            raise Decline
        OmegaConf.update(cfg, key, value, merge=True, force_add=True)
    else:
        OmegaConf.update(cfg, key, value, merge=True, force_add=override.kind == 'force_add')


def compose_with_hydra(overrides: list[str], conf_dir: Path = CONF_DIR) -> dict:
    """hydra.compose itself, resolved (the reference compose_quickly is held to)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    with initialize_config_dir(config_dir=str(conf_dir), version_base=None):
        cfg = compose(config_name=PRIMARY, overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)
