#!/bin/sh
# Fault: kernel records arrive on the console while the guest writes its framed results there
# (loongarch64's Debian guest has no virtio-serial port): 400 records, in bursts, during the
# scenarios. None of them is a kernel report. They cut into framed lines on the console; the
# harness must read every value anyway (each line is sent twice) or say which it lacks.
echo on > /proc/sys/kernel/printk_devkmsg
(
	i=0
	while [ $i -lt 400 ]; do
		i=$((i + 1))
		echo "hvo-fault: noise $i of 400, a line long enough to take a while on a serial port" > /dev/kmsg
		[ $((i % 20)) -eq 0 ] && sleep 0.2
	done
) &
/bin/sh /hvo/scenarios-real.sh
wait
