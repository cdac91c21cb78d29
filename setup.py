"""Build the optional C speed-ups; the package works (slower) without them."""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Build extensions, but never fail the install when a compiler is missing."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001
            print(f"warning: ksmsim C speed-ups not built ({exc}); using pure Python")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            print(f"warning: {ext.name} not built ({exc}); using pure Python")


setup(
    ext_modules=[Extension("ksmsim._speedups", ["src/ksmsim/_speedups.c"], optional=True)],
    cmdclass={"build_ext": OptionalBuildExt},
)
