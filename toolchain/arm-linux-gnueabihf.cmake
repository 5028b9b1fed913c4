# Cross toolchain for 32-bit ARM hard-float (Debian armhf: ARMv7-A, Thumb-2,
# VFPv3-D16) with a Debian sysroot.
#
#   scripts/sysroot armhf                      # builds /var/cache/tidings/sysroot-armhf
#   cmake -B build-armhf -DCMAKE_TOOLCHAIN_FILE=toolchain/arm-linux-gnueabihf.cmake \
#         [-DTIDINGS_SYSROOT=/path/to/sysroot]
#
# scripts/cross does all of this. See docs/cross.md.
set(TIDINGS_CROSS_TRIPLE arm-linux-gnueabihf)
set(TIDINGS_CROSS_DEBARCH armhf)
set(TIDINGS_CROSS_QEMU qemu-arm)
set(CMAKE_SYSTEM_PROCESSOR armv7l)
include(${CMAKE_CURRENT_LIST_DIR}/cross-common.cmake)
