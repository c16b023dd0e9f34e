"""README.md and docs/*.md name only flags, steps, files and links that exist.

Flags. Every `--word` of a page is checked against the options of the command it is written for, and
the command is found by context, so that no flag of another program is taken for run_sample.py's:

- A page is cut into passages: a paragraph, a list item, a table row, a heading, and each line of a
  fenced code block (a line ending in a backslash goes on with the next).
- Each passage starts with run_sample.py as its command (options: `misc.config.build_parser(catalog)`, the
  negative `--no-...` forms included).
- In code (a fenced line, or an inline code span), a command word switches the command for the rest of
  the passage: `run_sample.py`; `benchmarks/NAME.py` (the options of that file's `add_argument` calls,
  read with ast, and run_sample.py's too where the file passes unknown flags on with `parse_known_args`,
  as demo_seeds.py does); `benchmarks/NAME.sh` (none); `torchrun` (torch.distributed.run's parser); `srun`,
  `sbatch`, `#SBATCH` (SLURM_OPTIONS); `python -m MODULE` (the module's `add_argument` calls; pytest and
  pip: OTHER_TOOL_OPTIONS); `pip`, `pytest`. So `torchrun --nproc_per_node 4 run_sample.py --cda` checks
  `--nproc_per_node` against torchrun and `--cda` against run_sample.py, and in "`python
  benchmarks/demo_seeds.py` runs ...; `--quick` checks the plumbing" `--quick` is demo_seeds.py's.
  Command words in prose (outside code) switch nothing.
- A flag is an exact option string (argparse's abbreviations are not accepted); `--flag=value` is
  `--flag`; a `<name>` placeholder stands for any word (`--cda_<step>_pass`).

Steps. The value after `--steps` in code is a comma-separated list of steps `step.registry.ALL_STEPS` (or their aliases, `STEP_ALIASES`)
knows (the slots `step.registry` maps for every method).

Files. A repository path written in code (`step/make_cam.py`, `benchmarks/crf.py`, ...) exists, and a
dotted name (`misc.cda.paste_object`) is a module of the repository followed, if at all, by a name that
module defines at its top level.

Links. Every relative link `[text](target)` outside code resolves to a file or folder of the
repository, and its `#anchor` to a heading of that page (GitHub's slugs).
"""
from __future__ import annotations

import ast
import functools
import re
from pathlib import Path
from typing import Iterator, Optional

import pytest

from misc.config import build_parser
from step.registry import ALL_STEPS, STEP_ALIASES, catalog

ROOT = Path(__file__).resolve().parents[1]

# Pages that other branches add; links to them are allowed while they are missing. Remove an entry once
# its branch is merged.

# Options of programs without a parser in this repository that the pages may use.
SLURM_OPTIONS = frozenset({'--nodes', '--ntasks-per-node', '--gpus-per-node', '--cpus-per-task'})
OTHER_TOOL_OPTIONS: dict[str, frozenset] = {'pytest': frozenset(), 'pip': frozenset()}

FLAG = re.compile(r'(?<![\w-])--[A-Za-z][\w-]*(?:<[^>\s`]*>[\w-]*)*')
STEPS_VALUE = re.compile(r'--steps[ =]+([\w,]+)')
COMMAND = re.compile(r'(?P<run_sample>(?<![\w/.-])run_sample\.py\b)'
                     r'|(?P<benchmark>\bbenchmarks/\w+\.(?:py|sh)\b)'
                     r'|(?P<module>(?<![\w-])-m\s+[\w.]+)'
                     r'|(?P<torchrun>(?<![\w/.-])torchrun\b)'
                     r'|(?P<slurm>#SBATCH\b|(?<![\w/.-])(?:srun|sbatch)\b)'
                     r'|(?P<tool>(?<![\w/.-])(?:pytest|pip)\b)')
REPO_PATH = re.compile(r'(?<![\w/.-])(?:step|net|misc|voc12|benchmarks|tests)/[\w/]+\.(?:py|sh)\b')
DOTTED = re.compile(r'(?<![\w/.-])(?:step|net|misc|voc12)(?:\.[A-Za-z_]\w*)+')
LINK = re.compile(r'(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)')
CODE_SPAN = re.compile(r'`([^`]+)`')


def pages(root: Path = ROOT) -> list[Path]:
    return [root / 'README.md'] + sorted((root / 'docs').glob('*.md'))


# ----------------------------------------------------------------------------- what a command accepts

def parser_options(parser) -> frozenset:
    return frozenset(parser._option_string_actions)


def add_argument_options(path: Path) -> frozenset:
    """Option strings of every `add_argument(...)` call in a Python file (its parser, without running it)."""
    if not path.is_file() or path.suffix != '.py':
        return frozenset()
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, 'attr', None) == 'add_argument':
            found.update(arg.value for arg in node.args
                         if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith('-'))
    if 'parse_known_args' in path.read_text():               # the rest goes on to run_sample.py (demo_seeds.py)
        found |= options_of('run_sample.py')
    return frozenset(found | {'-h', '--help'})


@functools.lru_cache(maxsize=None)
def options_of(command: str, root: Path = ROOT) -> frozenset:
    if command == 'run_sample.py':
        return parser_options(build_parser(catalog()))
    if command == 'torchrun':
        from torch.distributed.run import get_args_parser
        return parser_options(get_args_parser())
    if command == 'slurm':
        return SLURM_OPTIONS
    if command in OTHER_TOOL_OPTIONS:
        return OTHER_TOOL_OPTIONS[command]
    if command.endswith(('.py', '.sh')):                       # benchmarks/NAME.py, a module's file
        return add_argument_options(root / command)
    return frozenset()


def command_of(match: re.Match) -> str:
    kind, text = match.lastgroup, match.group()
    if kind == 'run_sample':
        return 'run_sample.py'
    if kind == 'benchmark':
        return text
    if kind == 'module':
        module = text.split()[-1]
        return module if module in OTHER_TOOL_OPTIONS else module.replace('.', '/') + '.py'
    if kind == 'tool':
        return text
    return kind                                              # torchrun, slurm


def flag_known(flag: str, options: frozenset) -> bool:
    if '<' not in flag:
        return flag in options
    pattern = re.compile(''.join(r'[\w-]+' if part.startswith('<') else re.escape(part)
                                 for part in re.split(r'(<[^>]*>)', flag)))
    return any(pattern.fullmatch(option) for option in options)


# ----------------------------------------------------------------------------- cutting a page up

def passages(text: str) -> Iterator[tuple[int, list[tuple[bool, str]]]]:
    """(first line number, [(is_code, text), ...]) of each passage of a Markdown page."""
    lines = text.splitlines()
    current: list[str] = []
    start = 0
    in_fence = False
    pending = ''

    def prose(first: int, chunk: list[str]):
        joined = '\n'.join(chunk)
        segments, last = [], 0
        for span in CODE_SPAN.finditer(joined):
            segments += [(False, joined[last:span.start()]), (True, span.group(1))]
            last = span.end()
        segments.append((False, joined[last:]))
        return first, segments

    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith('```'):
            if current:
                yield prose(start, current)
                current = []
            in_fence = not in_fence
            continue
        if in_fence:
            pending += line.rstrip().removesuffix('\\') + ' ' if line.rstrip().endswith('\\') else line
            if not line.rstrip().endswith('\\'):
                yield number, [(True, pending)]
                pending = ''
            continue
        new_item = (not stripped or stripped.startswith(('|', '#', '- ', '* ')) or re.match(r'\d+\. ', stripped))
        if new_item and current:
            yield prose(start, current)
            current = []
        if stripped:
            if not current:
                start = number
            current.append(line)
            if stripped.startswith(('|', '#')):
                yield prose(start, current)
                current = []
    if current:
        yield prose(start, current)


# ----------------------------------------------------------------------------- the checks

def module_defines(path: Path, name: str) -> bool:
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return True
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any((a.asname or a.name) == name for a in node.names):
            return True
    return False


def dotted_problem(name: str, root: Path) -> Optional[str]:
    parts = name.split('.')
    for cut in range(len(parts), 0, -1):
        base = root.joinpath(*parts[:cut])
        module = base.with_suffix('.py') if not base.is_dir() else base / '__init__.py'
        if module.is_file():
            rest = parts[cut:]
            if rest and not module_defines(module, rest[0]):
                if module.name == '__init__.py':
                    return f'{name}: no such module in the repository'
                return f'{name}: {module.relative_to(root).as_posix()} defines no {rest[0]}'
            return None
    return f'{name}: no such module in the repository'


def content_problems(text: str, page: str = 'page.md', root: Path = ROOT) -> list[str]:
    """Unknown flags, unknown steps, missing files and modules named in one page's text."""
    problems = []
    for line, segments in passages(text):
        command = 'run_sample.py'
        for is_code, chunk in segments:
            events = [(m.start(), 'flag', m) for m in FLAG.finditer(chunk)]
            if is_code:
                events += [(m.start(), 'command', m) for m in COMMAND.finditer(chunk)]
                for value in STEPS_VALUE.findall(chunk):
                    unknown = [s for s in value.split(',') if s and s not in ALL_STEPS and s not in STEP_ALIASES]
                    if unknown:
                        problems.append(f'{page}:{line}: --steps names unknown step(s) {",".join(unknown)}')
                for path in REPO_PATH.findall(chunk):
                    if not (root / path).exists():
                        problems.append(f'{page}:{line}: {path} does not exist')
                for name in DOTTED.findall(chunk):
                    problem = dotted_problem(name, root)
                    if problem:
                        problems.append(f'{page}:{line}: {problem}')
            for _, kind, match in sorted(events, key=lambda e: e[0]):
                if kind == 'command':
                    command = command_of(match)
                elif not flag_known(match.group(), options_of(command, root)):
                    problems.append(f'{page}:{line}: {match.group()} is not an option of {command}')
    return problems


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r'[`*]|\[([^\]]*)\]\([^)]*\)', lambda m: m.group(1) or '', heading.strip().lower())
    return re.sub(r'[^\w\- ]', '', text).replace(' ', '-')


def anchors(text: str) -> set[str]:
    """The anchors of a page's headings (a repeated heading gets -1, -2, ...)."""
    found, seen = set(), {}
    in_fence = False
    for line in text.splitlines():
        if line.strip().startswith('```'):
            in_fence = not in_fence
        elif not in_fence and re.match(r'#{1,6} ', line):
            base = slug(line.lstrip('#'))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f'{base}-{count}')
    return found


def link_problems(text: str, page: Path, root: Path = ROOT) -> list[str]:
    """Relative links of a page (outside code) whose file or #anchor does not exist."""
    problems = []
    name = page.relative_to(root) if page.is_relative_to(root) else page.name
    for line, segments in passages(text):
        for is_code, chunk in segments:
            if is_code:
                continue
            for target in LINK.findall(chunk):
                if re.match(r'[a-z]+:', target):                # http:, https:, mailto:
                    continue
                file_part, _, anchor = target.partition('#')
                path = (page.parent / file_part).resolve() if file_part else page
                if file_part and not path.exists():
                    problems.append(f'{name}:{line}: link to {target}: no such file')
                    continue
                page_text = text if path == page else path.read_text() if path.suffix == '.md' else None
                if anchor and page_text is not None and anchor not in anchors(page_text):
                    problems.append(f'{name}:{line}: link to {target}: no heading with that anchor')
    return problems


# ----------------------------------------------------------------------------- the pages themselves

def test_pages_name_only_known_flags_steps_and_files():
    problems = [p for page in pages() for p in content_problems(page.read_text(), page.relative_to(ROOT).as_posix())]
    assert problems == []


def test_pages_links_resolve():
    problems = [p for page in pages() for p in link_problems(page.read_text(), page)]
    assert problems == []


def test_readme_gives_the_commands_ci_and_users_run():
    readme = (ROOT / 'README.md').read_text()
    for command in ('pip install -r requirements.txt', 'python run_sample.py', 'python -m pytest -q'):
        assert f'\n{command}\n' in readme
    assert 'python -m pytest -q' in (ROOT / '.ci' / 'run').read_text()
    assert len(readme.splitlines()) <= 250


def test_every_docs_page_is_in_the_readme_map():
    readme = (ROOT / 'README.md').read_text()
    listed = set(re.findall(r'\]\((docs/[\w-]+\.md)\)', readme))
    assert {p.relative_to(ROOT).as_posix() for p in (ROOT / 'docs').glob('*.md')} <= listed


# ----------------------------------------------------------------------------- the checker on made-up text

@pytest.mark.parametrize('text', [
    'Run `python run_sample.py --cda --sweep 0.1 0.2`.',
    '`--no-make_ins_seg_pass` and `--make_cam_pass=false`, or `--cda_<step>_pass`.',
    '```bash\ntorchrun --standalone --nproc_per_node 4 run_sample.py --voc12_root VOC2012 --cda\n```',
    '```bash\nsrun torchrun --nnodes 2 --rdzv_id 1 \\\n    run_sample.py --work_dir runs/cda --cda\n```',
    '```bash\n#SBATCH --nodes=2 --ntasks-per-node=1\n```',
    '`python benchmarks/demo_seeds.py` runs the seeds; `--quick` checks the plumbing.',
    '`python benchmarks/demo_seeds.py --jobs 8 --device cuda` (the rest goes on to run_sample.py)',
    '| `python benchmarks/training.py` | fp32 vs `--amp --channels-last` |',
    'Under torchrun every flag, such as `--resume`, is the same.',
    'Steps: `--steps make_cam,eval_cam,cda_train_cam`.',
    'Code in `step/make_cam.py`, `misc.cda.paste_object`, `python -m misc.mxnet_params IN OUT`.',
])
def test_checker_accepts(text):
    assert content_problems(text) == []


@pytest.mark.parametrize('text, problem', [
    ('Run `python run_sample.py --no_such_flag`.', '--no_such_flag is not an option of run_sample.py'),
    ('In prose --cam_batch too.', '--cam_batch is not an option of run_sample.py'),           # no abbreviations
    ('`--quick` alone is no run_sample.py flag.', '--quick is not an option of run_sample.py'),
    ('`python benchmarks/crf.py --cda`', '--cda is not an option of benchmarks/crf.py'),
    ('```bash\ntorchrun --nproc_per_node 4 --cda run_sample.py\n```', '--cda is not an option of torchrun'),
    ('`--cda_<step>_passes`', '--cda_<step>_passes is not an option of run_sample.py'),
    ('`--steps make_cam,make_cams`', '--steps names unknown step(s) make_cams'),
    ('See `step/no_such_step.py`.', 'step/no_such_step.py does not exist'),
    ('See `misc.cda.no_such_function`.', 'misc.cda.no_such_function: misc/cda.py defines no no_such_function'),
    ('See `misc.no_such_module`.', 'misc.no_such_module: no such module in the repository'),
])
def test_checker_finds(text, problem):
    assert [p.split(': ', 1)[1] for p in content_problems(text, 'made_up.md')] == [problem]


def test_the_command_holds_for_the_passage_only():
    text = '`python benchmarks/crf.py --quick`\n\n`--cda` is run_sample.py\'s again.\n\n- `--quick` too:'
    assert content_problems(text, 'p.md') == ['p.md:5: --quick is not an option of run_sample.py']


def test_links_are_checked(tmp_path):
    (tmp_path / 'docs').mkdir()
    (tmp_path / 'docs' / 'a.md').write_text('# A page\n\n## Its `--flag` section\n\ntext\n')
    page = tmp_path / 'README.md'
    good = ('[a](docs/a.md) [b](docs/a.md#a-page) [c](docs/a.md#its---flag-section) [d](#top) [e](docs/) '
            '[web](https://example.org/x#y) `[code](nowhere.md)`\n\n# Top\n')
    assert link_problems(good, page, tmp_path) == []
    bad = '[a](docs/b.md)\n\n[b](docs/a.md#no-such-heading)\n\n[c](#nowhere)\n'
    assert link_problems(bad, page, tmp_path) == [
        'README.md:1: link to docs/b.md: no such file',
        'README.md:3: link to docs/a.md#no-such-heading: no heading with that anchor',
        'README.md:5: link to #nowhere: no heading with that anchor']


def test_a_page_from_another_branch_is_checked_once_it_exists(tmp_path):
    (tmp_path / 'docs').mkdir()
    (tmp_path / 'docs' / 'slots.md').write_text('# Slots\n')
    page = tmp_path / 'README.md'
    assert link_problems('[s](docs/slots.md#slots)', page, tmp_path) == []
    assert link_problems('[s](docs/slots.md#renames)', page, tmp_path) == [
        'README.md:1: link to docs/slots.md#renames: no heading with that anchor']
