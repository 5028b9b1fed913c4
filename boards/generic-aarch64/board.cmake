# Board: generic 64-bit ARM edge gateway (any ARMv8-A core running Debian arm64).
# Included by the top-level CMakeLists.txt with -DTIDINGS_BOARD=generic-aarch64,
# after project() and the option() lines; cross builds use
# toolchain/aarch64-linux-gnu.cmake (scripts/cross aarch64 does both).
if(NOT CMAKE_SYSTEM_PROCESSOR MATCHES "^(aarch64|arm64|ARM64)$")
    message(FATAL_ERROR "board generic-aarch64 targets aarch64, not ${CMAKE_SYSTEM_PROCESSOR}: "
                        "add -DCMAKE_TOOLCHAIN_FILE=toolchain/aarch64-linux-gnu.cmake")
endif()

# Feature switches (cache defaults: -D on the command line wins).
set(TIDINGS_DESKTOP_NOTIFY OFF CACHE BOOL "Desktop notifications over D-Bus (sd-bus)")

# CPU: plain ARMv8-A, so the binary runs on every arm64 core (A35, A53, A55,
# A72, Neoverse, ...), tuned for the Cortex-A53: the in-order core of most
# cheap gateways (Raspberry Pi 3 / Zero 2, i.MX 8M, RK3328, Allwinner H5/H6),
# where instruction scheduling matters; out-of-order cores barely notice.
# -mcpu=cortex-a53 would add +crc, which plain C never uses.
add_compile_options(-march=armv8-a -mtune=cortex-a53)

# Size: the agent must stay <= 300 KB stripped (DESIGN.md). Sections per
# function/object let the linker drop what nothing calls. Pages: ld pads
# aarch64 segments to 64 KiB by default; 16 KiB still runs on 4K and 16K-page
# kernels (all arm64 gateways we target; 64K-page kernels are server-only).
add_compile_options(-Os -ffunction-sections -fdata-sections)
add_link_options(-Wl,--gc-sections -Wl,-z,max-page-size=16384 -Wl,--as-needed)

# Hardening that costs no new warnings: stack canaries, read-only relocations.
add_compile_options(-fstack-protector-strong)
add_link_options(-Wl,-z,relro -Wl,-z,now)
