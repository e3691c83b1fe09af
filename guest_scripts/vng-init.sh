#!/bin/busybox sh
# The guest side of `hvo-harness run --backend vng`: what guest_scripts/init does as PID 1 of
# the initramfs, for a guest that virtme-ng boots on the host's own root (9p, read-only; vng's
# virtme-ng-init is PID 1 and runs this as root through `vng --exec`, its stdout on vng's
# script port, which vng copies to the host's terminal next to the console). The harness's
# static busybox runs it:
#   BUSYBOX sh vng-init.sh BUSYBOX HVOH SCENARIOS_SH
# It lays out what the initramfs has (busybox applets and hvoh in PATH, scenarios.sh) on the
# tmpfs vng mounts at /run, so scenarios.sh runs the same busybox and helper as in the
# initramfs, and sends results and dmesg over the same virtio-serial ports. The host judges.
busybox=$1
helper=$2
scenarios=$3
dir=/run/hvo-harness
"$busybox" mkdir -p "$dir/bin" &&
	"$busybox" cp "$busybox" "$dir/bin/busybox" &&
	"$busybox" cp "$helper" "$dir/bin/hvoh" &&
	"$busybox" cp "$scenarios" "$dir/scenarios.sh" &&
	"$dir/bin/busybox" --install -s "$dir/bin" || {
	echo "hvo-init: error: cannot lay out $dir from $busybox, $helper, $scenarios"
	exit 1
}
export PATH="$dir/bin"
echo "hvo-init: start"

port_dev() {
	for name in /sys/class/virtio-ports/*/name; do
		[ -f "$name" ] || continue
		if [ "$(cat "$name")" = "$1" ]; then
			port=${name%/name}
			echo "/dev/${port##*/}"
			return 0
		fi
	done
	return 1
}

# The kernel log from /dev/kmsg, as guest_scripts/init streams it.
if dmesg_port=$(port_dev org.hvo-harness.dmesg); then
	hvoh kmsg > "$dmesg_port" &
else
	hvoh kmsg hvo-kmsg: &
fi
kmsg_pid=$!
results=$(port_dev org.hvo-harness.results)
if [ -n "$results" ]; then
	sh "$dir/scenarios.sh" > "$results" 2>&1
else
	# No channel: results on stdout, which reaches the host's console log, framed.
	echo "hvo-init: error: no virtio-serial port org.hvo-harness.results (CONFIG_VIRTIO_CONSOLE?)"
	sh "$dir/scenarios.sh" 2>&1 | hvoh frame hvo-result:
fi
echo "hvo-harness: kmsg end" > /dev/kmsg
( sleep 10; kill $kmsg_pid 2>/dev/null ) &
wait $kmsg_pid
echo "hvo-init: done"
# vng's init powers the guest off when this returns.
