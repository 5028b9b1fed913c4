# Cross toolchain for 64-bit ARM (Debian arm64) with a Debian sysroot.
#
#   scripts/sysroot arm64                      # builds /var/cache/tidings/sysroot-arm64
#   cmake -B build-aarch64 -DCMAKE_TOOLCHAIN_FILE=toolchain/aarch64-linux-gnu.cmake \
#         [-DTIDINGS_SYSROOT=/path/to/sysroot]
#
# scripts/cross does all of this. See docs/cross.md.
set(TIDINGS_CROSS_TRIPLE aarch64-linux-gnu)
set(TIDINGS_CROSS_DEBARCH arm64)
set(TIDINGS_CROSS_QEMU qemu-aarch64)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
include(${CMAKE_CURRENT_LIST_DIR}/cross-common.cmake)
