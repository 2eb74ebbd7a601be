# Sourced by the GPU session scripts: make the lent GPU image able to run medcf. It lacks MONAI, pydicom, MLflow,
# ignite and the JPEG-LS / JPEG 2000 codecs the phantoms write: their wheels travel in .whl (list in
# docs/guidance_study/run_on_gpu.sh) and go into WORK/site. Its SciPy (>= 1.18) rejects the sqrtm(disp=False)
# that MONAI 1.6.1's FID calls (medcf pins scipy < 1.18): a sitecustomize shim restores the old signature.
if [ -d .whl ] && ! python3 -c "import monai, pydicom, mlflow" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" .whl/*.whl > "$WORK/logs/pip.log" 2>&1
fi
export PYTHONPATH="$WORK/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
if python3 -c "import inspect, sys, scipy.linalg as l; sys.exit('disp' in inspect.signature(l.sqrtm).parameters)"; then
  mkdir -p "$WORK/shim"
  printf 'import scipy.linalg as _l\n_s = _l.sqrtm\ndef _sqrtm(a, disp=True, **k):\n    r = _s(a, **k)\n    return r if disp else (r, 0.0)\n_l.sqrtm = _sqrtm\n' \
    > "$WORK/shim/sitecustomize.py"
  export PYTHONPATH="$WORK/shim:$PYTHONPATH"
fi
