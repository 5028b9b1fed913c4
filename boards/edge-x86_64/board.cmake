# Board: x86_64 edge gateway (industrial PC, Atom/Celeron box running Debian amd64),
# and the native stand-in for the ARM gateway builds: bench/run measures the
# agent's memory with this board because RSS under qemu-user is qemu's, not the
# program's (docs/bench.md, agent-footprint). Same size and feature flags as
# generic-aarch64 and generic-armhf, without their CPU and page-size flags.
# Included by the top-level CMakeLists.txt with -DTIDINGS_BOARD=edge-x86_64.
if(NOT CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$")
    message(FATAL_ERROR "board edge-x86_64 targets x86_64, not ${CMAKE_SYSTEM_PROCESSOR}")
endif()

# Feature switches (cache defaults: -D on the command line wins). No desktop
# session on a gateway: without sd-bus the agent does not load libsystemd and
# what it pulls in (libgcrypt, liblz4, libzstd, liblzma, libcap: ~1.1 MiB RSS).
set(TIDINGS_DESKTOP_NOTIFY OFF CACHE BOOL "Desktop notifications over D-Bus (sd-bus)")

# CPU: the distribution's x86-64 baseline (see boards/desktop-x86_64).
add_compile_options(-mtune=generic)

# Size, as on the ARM gateway boards.
add_compile_options(-Os -ffunction-sections -fdata-sections)
add_link_options(-Wl,--gc-sections -Wl,--as-needed)

# Hardening that costs no new warnings: stack canaries, read-only relocations.
add_compile_options(-fstack-protector-strong)
add_link_options(-Wl,-z,relro -Wl,-z,now)
