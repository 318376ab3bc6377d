#!/bin/sh
# The "xfce4" process of the desktop service, run under its own session bus (dbus-run-session):
# the desktop background and the panel beside the window manager, which this shell becomes, so
# the process the supervisor watches is xfwm4. The service kills the whole process group on a
# restart, the panel and the desktop with it.
# the panel's default layout without its first-start dialog (a window that would hold the focus)
export XFCE_PANEL_MIGRATE_DEFAULT=1
xfdesktop --disable-wm-check >/dev/null 2>&1 &
xfce4-panel --disable-wm-check >/dev/null 2>&1 &
exec xfwm4 --compositor=off
