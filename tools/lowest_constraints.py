"""Print pip constraints pinning every dependency pyproject.toml declares (and the dev extra's) to its lower bound,
so that an environment built with them tests the versions the package claims to support."""
import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / 'pyproject.toml'


def lowest_pins(extras=('dev',)) -> list:
    project = tomllib.loads(PYPROJECT.read_text())['project']
    requirements = list(project['dependencies'])
    for extra in extras:
        requirements += project['optional-dependencies'][extra]
    pins = {}
    for requirement in requirements:
        match = re.match(r'^\s*([A-Za-z0-9_.\-]+)\s*(?:\[[^\]]*\])?\s*>=\s*([^,;\s]+)', requirement)
        if match is None:
            sys.exit(f'{PYPROJECT}: {requirement!r} has no lower bound (>=) to test')
        name = match.group(1).lower().replace('_', '-')
        pins[name] = match.group(2)
    return [f'{name}=={version}' for name, version in pins.items()]


if __name__ == '__main__':
    print('\n'.join(lowest_pins()))
