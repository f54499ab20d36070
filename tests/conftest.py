import os

# Tests share two cores with everything else: keep torch and BLAS to one thread each.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
