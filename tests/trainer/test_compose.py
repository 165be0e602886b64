"""trainer.compose against hydra itself: every preset with each override form composed both ways
(compose_quickly and hydra.compose) gives the same configuration, value types and key order
included; what it does not vouch for goes to hydra, whose own error reaches the one line; its
override parser agrees with hydra's on thousands of random overrides; a sweep's members are
checked in one process without hydra."""

from __future__ import annotations

import json
import os
import random
import subprocess

import pytest

from support import PYTHON, REPO
from test_validate import write_dataset
from trainer.compose import compose_quickly, compose_with_hydra, parse_override
from trainer.errors import BadInput
from trainer.validate import compose, model_presets, validate_members

# Each override form, in the shapes a user writes them (a set each, applied on top of a preset).
FORMS = {
    'nothing': [],
    'key=value': ['train.max_steps=50', 'train.lr=3e-4', 'data.path=/abs/ds', 'run_name=r1',
                  'run_dir=/tmp/runs/r1', 'seed=0', 'train.eps=.5e-3', 'model.dropout=0.',
                  'train.log_every=1_000', 'train.compile=TRUE', 'train.microbatch_size=null'],
    '+key=value': ['+train.extra=1', '+extra={a: 1, b: [x, y]}', '+model.extra_flag=true'],
    '++key=value': ['++train.lr=1e-3', '++wandb.tags=[a, b]', '++new.key=5'],
    '~key': ['~wandb.project', '~train.eval_batches', '~checkpoint.keep', '~run_dir'],
    '~key=value': ['~seed=17', '~data.shuffle=true'],
    'interpolations': ['run_name=${model.name}-lr${train.lr}', 'wandb.project=${run_name}',
                       'train.warmup_steps=${train.eval_every}', 'data.path=${oc.env:HOME}/ds',
                       "wandb.entity='${model.name} team'"],
    'quoted values': ["wandb.project='a b,c'", 'wandb.entity="x=y"', r"run_name='it\'s'",
                      "data.path='$(touch PWNED)'", 'train.precision="1"', "wandb.mode=''",
                      r'data.path="c:\\dir\\"'],
    'lists and dicts': ['train.betas=[0.8,0.99]', 'model.name=[ a , [b, c] ]', 'data.path={a: [1, {b: null}]}',
                        "wandb.entity=[a,'b c',${model.name}]", 'train.precision={}', 'seed=[]'],
    'bare values': ['wandb.project=my project', r'wandb.entity=a\,b\ c', 'data.path=/x/y.z-1+2%@?*|',
                    'run_name=1e3abc', 'wandb.mode=', 'model.name=inf', 'train.lr=-nan',
                    'run_dir=a:b : c', 'model.name=True'],
    'group override': ['model=gpt2', 'train=default'],
}


@pytest.mark.parametrize('preset', model_presets())
@pytest.mark.parametrize('form', FORMS)
def test_every_preset_with_each_override_form_composes_as_hydra_does(preset, form):
    overrides = [f'model={preset}', *FORMS[form]]
    if form == 'group override':
        overrides = FORMS[form][:1] if preset == 'gpt2' else [FORMS[form][1], f'model={preset}']
    quick = compose_quickly(overrides)
    assert quick is not None, f'not vouched for: {overrides}'
    # repr: equal values of equal types (1 is not 1.0 is not True) in the same key order
    assert repr(quick) == repr(compose_with_hydra(overrides))
    if form == 'interpolations':
        assert quick['run_name'] == f'{quick["model"]["name"]}-lr{quick["train"]["lr"]}'


def test_the_shipped_presets_are_all_tested():
    assert set(model_presets()) >= {'tiny', 'gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl'}


def hydra_says(overrides) -> str:
    """The first line of hydra's own error for these overrides."""
    with pytest.raises(Exception) as raised:
        compose_with_hydra(overrides)
    return str(raised.value).strip().splitlines()[0]


# Not vouched for: hydra composes or refuses them, and its own first line is the error.
HYDRAS_TO_SAY = [
    ['train.lr=1,2'],  # a sweep
    ['train.lr=[1,2'],  # does not parse
    ["wandb.project='unterminated"],
    ['wandb.project=a)b'],
    ['+train.lr=1'],  # already there
    ['~wandb.entity'],  # null: hydra says it does not exist
    ['~seed=18'],  # not its value
    ['train.max_steps.x=1'],  # a key under a number
    ['train.lr=choice(1,2)'],  # a sweep function
    ['data=nope'],  # no such option
    ['train.warmup_steps=${nowhere}'],  # an interpolation that does not resolve
]


@pytest.mark.parametrize('overrides', HYDRAS_TO_SAY, ids=[' '.join(o) for o in HYDRAS_TO_SAY])
def test_what_is_not_vouched_for_gets_hydras_own_error(overrides):
    assert compose_quickly(overrides) is None
    said = hydra_says(overrides)
    with pytest.raises(BadInput) as raised:
        compose(overrides)
    assert '\n' not in str(raised.value) and said in str(raised.value)


def test_hydra_still_composes_what_is_not_vouched_for():
    overrides = ['train.lr=float(3)', 'hydra.job.name=x']  # a function; hydra's own node
    assert compose_quickly(overrides) is None
    assert compose(overrides)['train']['lr'] == 3.0


# hydra's grammar, piece by piece: numbers, keywords, escapes, quotes, brackets, interpolations
PIECES = ['a', 'b1', '_x', '-', '+', '.', '0', '1', '05', '1_0', '1.5', '.5', '1e3', 'e', 'inf', 'nan',
          'true', 'False', 'null', ' ', '\t', ',', ':', '=', '[', ']', '{', '}', '(', ')', "'", '"',
          '\\', '\\,', '\\\\', '$', '${a.b}', '${x}}', '/', '%', '*', '@', '?', '|', 'é', '\n', 'int']


def test_the_override_parser_reads_every_override_it_accepts_as_hydra_does():
    from hydra.core.override_parser.overrides_parser import OverridesParser
    parser = OverridesParser.create()
    kinds = {'CHANGE': 'change', 'ADD': 'add', 'FORCE_ADD': 'force_add', 'DEL': 'delete'}
    rng = random.Random(30)
    vouched = 0
    for _ in range(3000):
        value = ''.join(rng.choice(PIECES) for _ in range(rng.randint(0, 7)))
        text = rng.choice(['', '+', '++', '~']) + rng.choice(['k', 'a.b', 'a-b.c_d']) + f'={value}'
        mine = parse_override(text)
        if mine is None:
            continue
        vouched += 1
        theirs = parser.parse_override(text)  # raises where hydra refuses what this parser accepted
        assert (theirs.package, theirs.value_type.name) == (None, 'ELEMENT'), text
        assert (kinds[theirs.type.name], theirs.key_or_group, repr(theirs.value())) == \
            (mine.kind, mine.key, repr(mine.value)), text
    assert vouched > 1000  # the comparison saw plenty of accepted overrides


def test_a_sweeps_members_are_checked_in_one_process_without_hydra(tmp_path):
    data = write_dataset(tmp_path / 'ds')
    script = f'''
import json, sys
from trainer.errors import BadInput
from trainer.validate import validate_members
members = [["model=tiny", "data.path={data}", "model.block_size=32", f"train.lr={{lr}}"]
           for lr in (1e-4, 3e-4, 1e-3, 3e-3)]
plans = validate_members(members, world_size=2)
try:
    validate_members(members + [members[0] + ["train.global_batch_size=7"]], world_size=2)
except BadInput as e:
    refused = str(e)
print(json.dumps({{"lrs": [p.config["train"]["lr"] for p in plans], "refused": refused,
                  "hydra": "hydra" in sys.modules}}))
'''
    proc = subprocess.run([PYTHON, '-c', script], cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO)),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result['lrs'] == [1e-4, 3e-4, 1e-3, 3e-3]
    assert result['refused'].startswith('member 5 of 5 (model=tiny ')
    assert result['refused'].endswith(
        'train.global_batch_size=7: not divisible by the 2 ranks; allowed: a multiple of 2')
    assert result['hydra'] is False
