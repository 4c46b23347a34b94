"""Build the native extension deepcomp._native with CMake (the pybind11 cmake_example way): Ninja when it
is there, CMake's default generator otherwise; CMAKE_ARGS adds CMake arguments."""
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str, sourcedir: str = "") -> None:
        super().__init__(name, sources=[])
        self.sourcedir = os.fspath(Path(sourcedir).resolve())


def _ninja_available() -> bool:
    """Ninja from PATH or from the `ninja` Python package (the build requirement)."""
    if shutil.which("ninja"):
        return True
    try:
        import ninja  # noqa: F401
    except ImportError:
        return False
    return True


class CMakeBuild(build_ext):
    def build_extension(self, ext: CMakeExtension) -> None:
        import pybind11

        extdir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        cfg = os.environ.get("DEEPCOMP_BUILD_TYPE", "Release")
        cmake_args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={extdir}{os.sep}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={cfg}",
        ]
        # Extra arguments from the environment (e.g. CMAKE_ARGS="-DCMAKE_CXX_COMPILER=clang++"), as
        # conda-build and the pybind11 example pass them.
        user_args = shlex.split(os.environ.get("CMAKE_ARGS", ""))
        cmake_args += user_args
        # Ninja unless the user chose a generator (CMAKE_GENERATOR or -G in CMAKE_ARGS); without Ninja,
        # CMake's default generator (Unix Makefiles here).
        chose = os.environ.get("CMAKE_GENERATOR") or any(a.startswith("-G") for a in user_args)
        if not chose and _ninja_available():
            cmake_args.append("-GNinja")
            try:
                import ninja

                cmake_args.append(f"-DCMAKE_MAKE_PROGRAM:FILEPATH={Path(ninja.BIN_DIR) / 'ninja'}")
            except ImportError:
                pass
        sanitize = os.environ.get("DEEPCOMP_SANITIZE")
        if sanitize:
            cmake_args.append(f"-DDEEPCOMP_SANITIZE={sanitize}")
        build_temp = Path(self.build_temp) / ext.name
        build_temp.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cmake", ext.sourcedir, *cmake_args], cwd=build_temp, check=True)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
        subprocess.run(["cmake", "--build", ".", "-j", jobs], cwd=build_temp, check=True)


setup(
    ext_modules=[CMakeExtension("deepcomp._native", sourcedir=str(HERE))],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
