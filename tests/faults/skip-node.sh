#!/bin/sh
# Fault: the guest silently leaves out every scenario on node 1 (its env still says nodes=0,1).
/bin/sh /hvo/scenarios-real.sh 2>&1 | grep -v 'node=1'
