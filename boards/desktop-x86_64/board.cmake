# Board: Linux desktop or laptop, x86_64 (native build, no toolchain file).
# Included by the top-level CMakeLists.txt with -DTIDINGS_BOARD=desktop-x86_64,
# after project() and the option() lines.
if(NOT CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$")
    message(FATAL_ERROR "board desktop-x86_64 targets x86_64, not ${CMAKE_SYSTEM_PROCESSOR}")
endif()

# Feature switches (cache defaults: -D on the command line wins). The desktop
# agent shows notifications itself (org.freedesktop.Notifications).
set(TIDINGS_DESKTOP_NOTIFY ON CACHE BOOL "Desktop notifications over D-Bus (sd-bus)")

# CPU: the x86-64 baseline the distribution uses, with generic tuning; no
# -march=x86-64-v2. The agent is I/O-bound and spends its CPU in SQLite,
# cJSON and libmosquitto, which come from Debian built for the baseline
# anyway; v2 (SSE4.2/POPCNT) would only make the binary die with SIGILL on
# the odd old machine for no gain we could measure. A packager who wants v2
# passes -DCMAKE_C_FLAGS=-march=x86-64-v2.
add_compile_options(-mtune=generic)

# Speed over size here (the compiler's default -O2 from the build type),
# but still drop unused code.
add_compile_options(-ffunction-sections -fdata-sections)
add_link_options(-Wl,--gc-sections -Wl,--as-needed)

# Hardening that costs no new warnings: stack canaries, read-only relocations.
add_compile_options(-fstack-protector-strong)
add_link_options(-Wl,-z,relro -Wl,-z,now)
