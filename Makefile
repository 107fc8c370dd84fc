# The two commands of the README, and the set-up they share.
#   make check   set-up, then `convformer-fast info` and a preset through every backend
#   make test    set-up, then the whole test suite (this is what .ci/run runs)
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# Whether the CUDA kernels are built (wherever torch is a CUDA build and nvcc is found, GPU
# or not; FORCE_CUDA=1/0 overrides) is decided by convformer_fast/toolchain.py alone, and
# the test suite checks the build against the same rule.
MAX_JOBS ?= 2
export MAX_JOBS
SOURCES := setup.py pyproject.toml requirements.txt $(shell find csrc kernels -type f 2>/dev/null)

CMAKE_BUILD_DIR ?= build/cmake

.PHONY: setup check test cmake-test clean

setup: .setup-stamp

.setup-stamp: $(SOURCES)
	$(PIP) install -r requirements.txt
	$(PIP) install --no-build-isolation -e .
	touch $@

check: setup
	convformer-fast info
	convformer-fast check --preset h36m-243

test: setup
	$(PYTHON) -m pytest tests -q
	$(MAKE) cmake-test

# The op library and its C++ test, built against libtorch as a C++ user would.
cmake-test: setup
	TORCH_CUDA_ARCH_LIST="8.0;9.0" cmake -S . -B $(CMAKE_BUILD_DIR) -DCMAKE_BUILD_TYPE=Release \
		-DCMAKE_PREFIX_PATH="$$($(PYTHON) -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
		-DPython3_EXECUTABLE="$$($(PYTHON) -c 'import sys; print(sys.executable)')" \
		$$($(PYTHON) convformer_fast/toolchain.py cmake-args)
	cmake --build $(CMAKE_BUILD_DIR) -j$(MAX_JOBS)
	ctest --test-dir $(CMAKE_BUILD_DIR) --output-on-failure

clean:
	rm -rf build .setup-stamp convformer_fast/_C*.so *.egg-info
