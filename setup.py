"""Package list only (everything else is in pyproject.toml).

The repository root is the `peft_apps` package, so setuptools' automatic discovery would name the
folders `core`, `apps.autore`, ... instead of `peft_apps.core`, .... Listing them here by walking the
tree means a new app folder is packaged without editing any file. This file itself is left out.
"""

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


class _BuildPy(build_py):
    def find_package_modules(self, package, package_dir):
        mods = super().find_package_modules(package, package_dir)
        return [m for m in mods if not (package == "peft_apps" and m[1] == "setup")]


setup(
    packages=["peft_apps"] + [f"peft_apps.{p}" for p in find_packages(include=["core*", "apps*", "eval*"])],
    cmdclass={"build_py": _BuildPy},
)
