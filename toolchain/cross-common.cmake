# Shared part of the cross toolchain files; not meant to be used on its own.
# Expects TIDINGS_CROSS_TRIPLE, TIDINGS_CROSS_DEBARCH, TIDINGS_CROSS_QEMU and
# CMAKE_SYSTEM_PROCESSOR to be set by the including toolchain file.
#
# The sysroot comes from, in order: -DTIDINGS_SYSROOT=..., the environment
# variable TIDINGS_SYSROOT, the default of scripts/sysroot
# (/var/cache/tidings/sysroot-<debian arch>).
set(CMAKE_SYSTEM_NAME Linux)

if(NOT TIDINGS_SYSROOT AND DEFINED ENV{TIDINGS_SYSROOT})
    set(TIDINGS_SYSROOT "$ENV{TIDINGS_SYSROOT}")
endif()
if(NOT TIDINGS_SYSROOT)
    set(TIDINGS_SYSROOT "/var/cache/tidings/sysroot-${TIDINGS_CROSS_DEBARCH}")
endif()
if(NOT EXISTS "${TIDINGS_SYSROOT}/usr/include/stdio.h")
    message(FATAL_ERROR "no ${TIDINGS_CROSS_DEBARCH} sysroot at ${TIDINGS_SYSROOT}: "
                        "run scripts/sysroot ${TIDINGS_CROSS_DEBARCH} [DIR] "
                        "and pass -DTIDINGS_SYSROOT=DIR (or use scripts/cross)")
endif()
set(TIDINGS_SYSROOT "${TIDINGS_SYSROOT}" CACHE PATH "Sysroot for the cross build" FORCE)
# try_compile() projects re-read this file: hand them the same sysroot.
list(APPEND CMAKE_TRY_COMPILE_PLATFORM_VARIABLES TIDINGS_SYSROOT)

set(CMAKE_C_COMPILER ${TIDINGS_CROSS_TRIPLE}-gcc)
set(CMAKE_SYSROOT "${TIDINGS_SYSROOT}")
set(CMAKE_LIBRARY_ARCHITECTURE ${TIDINGS_CROSS_TRIPLE})

# Libraries, headers and packages come from the sysroot only; programs (the
# compiler's helpers, code generators, qemu) always from the host.
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# Should a CMakeLists ever use pkg-config, it must read the sysroot's .pc files.
set(ENV{PKG_CONFIG_SYSROOT_DIR} "${TIDINGS_SYSROOT}")
set(ENV{PKG_CONFIG_LIBDIR}
    "${TIDINGS_SYSROOT}/usr/lib/${TIDINGS_CROSS_TRIPLE}/pkgconfig:${TIDINGS_SYSROOT}/usr/share/pkgconfig")

# ctest (and add_custom_command on built tools) run target binaries through
# qemu-user; -L makes qemu load the dynamic loader and libraries from the
# sysroot. No binfmt_misc registration is needed.
set(CMAKE_CROSSCOMPILING_EMULATOR "${TIDINGS_CROSS_QEMU};-L;${TIDINGS_SYSROOT}")
