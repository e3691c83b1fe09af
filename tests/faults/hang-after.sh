#!/bin/sh
# Fault: the guest reports every scenario, then hangs: init never says "hvo-init: done".
/bin/sh /hvo/scenarios-real.sh
echo "hvo-fault: hanging after the scenarios" > /dev/console
while :; do sleep 3600; done
