"""Write /etc/ld.so.conf.d/nvidia-pip.conf listing the library folders of the nvidia-* wheels.

onnxruntime-gpu loads CUDA, cuBLAS and cuDNN with dlopen(); the pip wheels put them under
site-packages/nvidia/**/lib, which the dynamic loader does not search. Registering those folders with
ldconfig makes them found without LD_LIBRARY_PATH. Run as root, then run ldconfig.
"""

import sys
import sysconfig
from pathlib import Path

root = Path(sysconfig.get_paths()["purelib"]) / "nvidia"
dirs = sorted({str(p.parent) for p in root.rglob("*.so*")}) if root.is_dir() else []
Path("/etc/ld.so.conf.d/nvidia-pip.conf").write_text("".join(d + "\n" for d in dirs))
print(f"{len(dirs)} nvidia library folder(s) registered", file=sys.stderr)
