# Sourced by the device-call scripts: wheels for the packages the GPU image lacks
# (pycocotools, platformdirs: `pip download` them into .whl/ here), PYTHONPATH, the machine named.
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
out=${OUT:-out}
mkdir -p "$out" runs
wheels=${WHEELS:-.whl}  # WHEELS=none: use what is installed (a dry run here)
if ls "$wheels"/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$wheels"/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
