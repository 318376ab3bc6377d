#!/bin/sh
# The "xfce4" process of the desktop service, run under its own session bus (dbus-run-session):
# the window manager, which this shell becomes (so the process the supervisor watches is xfwm4),
# and the desktop background and the panel, started once the window manager is up: started
# beside it they compete for the CPU while it loads GTK, and it came up in 9 s instead of under
# 2 (gVisor, 2 cores). The service kills the whole process group on a restart, these with it.
#
# The service starts this beside Xvfb and tells it by closing descriptors (no polling: a process
# per poll took CPU from the window manager under gVisor): $1 once the display is up at its
# size, $2 once the window manager is. Without them (run by hand) it polls for the second.
#
# Xfconf's channels as the first start writes them (xfconf/, captured from one; the template's
# home has them already): without them xfwm4 and the keyboard shortcuts copy their defaults into
# the session's xfconfd one property at a time, a D-Bus round trip each, 5.5 s of a 7.5 s window
# manager start under gVisor
channels="${XDG_CONFIG_HOME:-$HOME/.config}/xfce4/xfconf/xfce-perchannel-xml"
if [ ! -d "$channels" ]; then
    mkdir -p "$channels" && cp -n "$(dirname "$0")"/xfconf/*.xml "$channels"/
fi
# the panel's default layout without its first-start dialog (a window that would hold the focus)
export XFCE_PANEL_MIGRATE_DEFAULT=1
# no accessibility bus here: GTK would ask the session bus for one in every process
export NO_AT_BRIDGE=1
# Xfconf's daemon while Xvfb starts, rather than activated by the window manager's first call
for xfconfd in /usr/lib/*/xfce4/xfconf/xfconfd; do
    if [ -x "$xfconfd" ]; then "$xfconfd" >/dev/null 2>&1 & fi
done
if [ -n "$1" ]; then
    read -r _ <&"$1"
fi
(
    if [ -n "$2" ]; then
        read -r _ <&"$2"
    else
        tries=0  # _NET_CURRENT_DESKTOP is set by the window manager: up to 20 s
        until xdotool get_desktop >/dev/null 2>&1 || [ "$tries" -ge 200 ]; do
            sleep 0.1
            tries=$((tries + 1))
        done
    fi
    xfdesktop --disable-wm-check >/dev/null 2>&1 &
    exec xfce4-panel --disable-wm-check >/dev/null 2>&1
) &
exec xfwm4 --compositor=off
