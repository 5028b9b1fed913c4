# Board: generic 32-bit ARM edge gateway (ARMv7-A hard-float, Debian armhf).
# Included by the top-level CMakeLists.txt with -DTIDINGS_BOARD=generic-armhf,
# after project() and the option() lines; cross builds use
# toolchain/arm-linux-gnueabihf.cmake (scripts/cross armhf does both).
if(NOT CMAKE_SYSTEM_PROCESSOR MATCHES "^(arm|armv7.*|armhf)$")
    message(FATAL_ERROR "board generic-armhf targets ARMv7, not ${CMAKE_SYSTEM_PROCESSOR}: "
                        "add -DCMAKE_TOOLCHAIN_FILE=toolchain/arm-linux-gnueabihf.cmake")
endif()

# Feature switches (cache defaults: -D on the command line wins).
set(TIDINGS_DESKTOP_NOTIFY OFF CACHE BOOL "Desktop notifications over D-Bus (sd-bus)")

# CPU: Debian's armhf baseline, so the agent runs wherever the Debian libraries
# it links against run: ARMv7-A, Thumb-2, VFPv3-D16, hard-float ABI. That
# includes cores without NEON or with only 16 double registers (Cortex-A9 on
# Tegra 2, Marvell Armada 370/XP), which -mfpu=neon-vfpv4 would break. The
# agent is I/O- and SQLite-bound: NEON would buy nothing measurable. A board
# with a known core (say Cortex-A7) can add -mcpu=cortex-a7 -mfpu=neon-vfpv4.
# Thumb-2 is also about a quarter smaller than ARM code. Tuned (scheduling
# only, no new instructions) for the Cortex-A7, the most common ARMv7 core on
# today's gateways (Raspberry Pi 2, Allwinner H3, i.MX 6UL/ULL, STM32MP1).
add_compile_options(-march=armv7-a -mfpu=vfpv3-d16 -mfloat-abi=hard -mthumb -mtune=cortex-a7)

# Size: the agent must stay small (DESIGN.md). Sections per function/object
# let the linker drop what nothing calls. 32-bit ARM kernels only have 4 KiB
# pages, so segments need no more alignment than that (ld pads to 64 KiB).
add_compile_options(-Os -ffunction-sections -fdata-sections)
add_link_options(-Wl,--gc-sections -Wl,-z,max-page-size=4096 -Wl,--as-needed)

# Hardening that costs no new warnings: stack canaries, read-only relocations.
add_compile_options(-fstack-protector-strong)
add_link_options(-Wl,-z,relro -Wl,-z,now)
