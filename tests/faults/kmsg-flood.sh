#!/bin/sh
# Fault: the kernel log floods the console: kernel records, written to /dev/kmsg as fast as
# the shell can (ratelimiting off), forever. None of them is a kernel report.
echo on > /proc/sys/kernel/printk_devkmsg
i=0
while :; do
	i=$((i + 1))
	echo "hvo-fault: flood $i" > /dev/kmsg
done
