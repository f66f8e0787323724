"""The commands' options come from `RunConfig` (issue 21): every field a command takes is an option with help, every old
spelling still parses, a bad setting names its option from `ConfigError.field`, and the size rule is one message."""
import pytest

from unet_tutorial import cli, folder, inference, options
from unet_tutorial.config import RunConfig
from unet_tutorial.model import ConfigError, check_size

COMMANDS = {'unet-compare': (cli.compare, cli.COMPARE_FIELDS), 'unet-train': (cli.train, cli.TRAIN_FIELDS)}
# every option spelling the commands took before their options came from `RunConfig` (scripts and lessons use them)
OLD = {'unet-compare': 'data download quick preset experiments epochs size width batch_size lr schedule amp seeds limit '
                       'keep_bad_trimaps device threads out',
       'unet-train': 'data out preset experiment finetune epochs size width depth batch_size lr schedule amp seed valid_pct '
                     'test_pct split_seed ignore foreground no_augment device threads'}


def _options(prog):
    func, fields = COMMANDS[prog]
    p = options.command_parser(func, prog, fields)
    return {s: a for a in p._actions for s in a.option_strings}


@pytest.mark.parametrize('prog', COMMANDS)
def test_every_field_is_an_option_with_help(prog):
    opts, (_, fields) = _options(prog), COMMANDS[prog]
    for k in fields:
        a = opts.get(f"--{k.replace('_', '-')}")
        assert a is not None and a.dest == k, (prog, k)
        assert options.FIELD_DOCS[k] in a.help, (prog, k, a.help)   # the field's comment
        if '_' in k: assert opts.get(f'--{k}') is a, (prog, k)   # the snake_case alias
    for a in set(opts.values()):
        assert a.help, (prog, a.option_strings)   # --help says something about every option


def test_shared_fields_are_options_of_both_commands():
    shared = {'epochs', 'size', 'width', 'batch_size', 'lr', 'schedule', 'amp', 'device'}
    assert shared <= set(cli.COMPARE_FIELDS) & set(cli.TRAIN_FIELDS)
    assert set(cli.COMPARE_FIELDS) | set(cli.TRAIN_FIELDS) <= set(RunConfig.__dataclass_fields__)


@pytest.mark.parametrize('prog', COMMANDS)
def test_old_spellings_still_parse(prog):
    opts = _options(prog)
    for k in OLD[prog].split():
        assert f"--{k.replace('_', '-')}" in opts and f'--{k}' in opts, (prog, k)


BAD = [('size', '72'), ('batch_size', '0'), ('lr', '-1'), ('epochs', '0'), ('seed', str(2**32)), ('schedule', 'linear')]


@pytest.mark.parametrize('field,bad', BAD)
def test_bad_field_names_its_option(tmp_path, capsys, field, bad):
    value = RunConfig.__dataclass_fields__[field].type   # 'int', 'float', 'str|None'
    v = bad if 'str' in value else float(bad) if value == 'float' else int(bad)
    with pytest.raises(ConfigError) as e: RunConfig(**{field: v})
    opt = f"--{field.replace('_', '-')}"
    assert e.value.field == field and str(e.value).startswith(f'{field} '), str(e.value)
    assert e.value.said(lambda k: f"--{k.replace('_', '-')}").startswith(f'{opt} ')
    for prog, (func, fields) in COMMANDS.items():
        if field not in fields: continue
        main = cli.unet_compare if prog == 'unet-compare' else cli.unet_train
        pre = ['--quick'] if prog == 'unet-compare' else ['--data', str(tmp_path/'mine')]
        assert main([*pre, '--out', str(tmp_path/'out'), f'--{field}', bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f'{prog}: error: {opt} '), err
        assert 'RunConfig' not in err and not (tmp_path/'out').exists(), err


@pytest.mark.parametrize('size,depth,near', [(100, 4, '96 or 112'), (72, 4, '64 or 80'), (20, 3, '16 or 24'), (33, 1, '32 or 34')])
def test_one_size_rule(size, depth, near):
    said = []
    for check in (lambda: RunConfig(size=size, depth=depth), lambda: inference.check_size(size, depth),
                  lambda: folder.train_size(size, depth), lambda: check_size(size, depth)):
        with pytest.raises(ConfigError) as e: check()
        said.append(str(e.value))
        assert e.value.field == 'size'
    assert len(set(said)) == 1, said
    assert f'use {near} (got {size})' in said[0] and f'multiple of {2**depth}' in said[0], said[0]
