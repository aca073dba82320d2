"""Only what pyproject.toml cannot say: the wheel carries the compiled core's sources (cpp/, compiled on
first use against the torch actually installed) as package data auditor/_cpp."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithCppSources(build_py):
    def run(self):
        super().run()
        src = Path(__file__).parent / "cpp"
        dst = Path(self.build_lib) / "auditor" / "_cpp"
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.o", "__pycache__"))


setup(cmdclass={"build_py": BuildWithCppSources})
