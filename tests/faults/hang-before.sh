#!/bin/sh
# Fault: the guest hangs before it reports anything (no KTAP, no "hvo-init: done").
echo "hvo-fault: hanging before the scenarios" > /dev/console
while :; do sleep 3600; done
