#!/bin/sh
# The "xfce4" process of the desktop service, run under its own session bus (dbus-run-session):
# the window manager, which this shell becomes (so the process the supervisor watches is xfwm4),
# and the desktop background and the panel, started once the window manager is up: started
# beside it they compete for the CPU while it loads GTK, and it came up in 9 s instead of under
# 2 (gVisor, 2 cores). The service kills the whole process group on a restart, these with it.
# the panel's default layout without its first-start dialog (a window that would hold the focus)
export XFCE_PANEL_MIGRATE_DEFAULT=1
# no accessibility bus here: GTK would ask the session bus for one in every process
export NO_AT_BRIDGE=1
(
    tries=0  # _NET_CURRENT_DESKTOP is set by the window manager: up to 20 s
    until xdotool get_desktop >/dev/null 2>&1 || [ "$tries" -ge 200 ]; do
        sleep 0.1
        tries=$((tries + 1))
    done
    xfdesktop --disable-wm-check >/dev/null 2>&1 &
    exec xfce4-panel --disable-wm-check >/dev/null 2>&1
) &
exec xfwm4 --compositor=off
