"""Package discovery for zeroseg.

The code folders at the repository root (``platform/``, ``methods/``, ``dashboards/``) are mapped
into the ``zeroseg`` namespace so that ``platform/`` can never shadow the standard library's
``platform`` module (they have no top-level ``__init__.py``). Every subpackage is found here rather
than listed by hand in pyproject.toml; a test checks that the installed tree matches the folders.
"""

from setuptools import find_namespace_packages, setup

ROOTS = {
    "zeroseg.platform": "platform",
    "zeroseg.methods": "methods",
    "zeroseg.dashboards": "dashboards",
}


def _packages() -> tuple[list[str], dict[str, str]]:
    packages: list[str] = []
    package_dir: dict[str, str] = {}
    for namespace, folder in ROOTS.items():
        package_dir[namespace] = folder
        packages.append(namespace)
        for sub in find_namespace_packages(where=folder, exclude=["*__pycache__*"]):
            packages.append(f"{namespace}.{sub}")
    return packages, package_dir


PACKAGES, PACKAGE_DIR = _packages()

setup(
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    package_data={"": ["*.csv", "*.txt", "*.json", "*.md", "*.yaml"]},
)
