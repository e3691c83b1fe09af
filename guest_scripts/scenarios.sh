#!/bin/busybox sh
# Allocate huge pages at boot (already done by the kernel's hugepages=) and at run time,
# per node and per size, touch them, check their kpageflags, and report raw numbers as KTAP
# with "# hvo: key=value" diagnostic lines. The plan comes from the kernel command line:
#   hvo.sizes=KB,KB,...        huge page sizes in kB (as in /sys/kernel/mm/hugepages)
#   hvo.runtime=KB:N,...       pages per node to allocate at run time for each size
#   hvo.sysctl=V,...           hugetlb_optimize_vmemmap values, one run-time pass each
# Everything here is reported, never judged: the host decides pass, fail and skip.

cmdline_value() {
	for word in $(cat /proc/cmdline); do
		case "$word" in "$1="*) echo "${word#*=}"; return 0 ;; esac
	done
	return 1
}

vmstat() { awk -v k="$1" '$1 == k { print $2; f = 1 } END { if (!f) print "absent" }' /proc/vmstat; }
memfree_kb() { awk '$1 == "MemFree:" { print $2 }' /proc/meminfo; }

counters() {
	echo "memmap_pages=$(vmstat nr_memmap_pages) memmap_boot_pages=$(vmstat nr_memmap_boot_pages) memfree_kb=$(memfree_kb)"
}

node_dir() { echo "/sys/devices/system/node/node$1/hugepages/hugepages-$2kB"; }

# A marker in the kernel log: the host attributes a WARN or BUG to the scenario it followed.
mark() { echo "hvo-harness: scenario $1" > /dev/kmsg; }

sizes=$(cmdline_value hvo.sizes | tr , ' ')
runtime=$(cmdline_value hvo.runtime | tr , ' ')
sysctl_values=$(cmdline_value hvo.sysctl | tr , ' ')
nodes=$(cat /sys/devices/system/node/online 2>/dev/null | awk -F- '{ if (NF == 2) for (i = $1; i <= $2; i++) printf "%d ", i; else print $1 }')
[ -n "$nodes" ] || nodes=0
sysctl=/proc/sys/vm/hugetlb_optimize_vmemmap
# Without the sysctl (HVO not built in) there is nothing to switch: one run-time pass.
[ -f $sysctl ] || sysctl_values=""

count_words() { set -- $1; echo $#; }
n_sizes=$(count_words "$sizes")
n_nodes=$(count_words "$nodes")
n_runtime=$(count_words "$runtime")
n_sysctl=$(count_words "$sysctl_values")
[ "$n_sysctl" -gt 0 ] || n_sysctl=1

echo "KTAP version 1"
echo "# hvo: env page_size=$(hvoh pagesize) nodes=$(echo $nodes | tr ' ' ,) registered=$(ls /sys/kernel/mm/hugepages 2>/dev/null | sed 's/hugepages-//' | tr '\n' ' ' | sed 's/ $//' | tr ' ' ,) sysctl=$( [ -f $sysctl ] && cat $sysctl || echo absent) release=$(uname -r) machine=$(uname -m)"
echo "# hvo: env-counters $(counters)"
echo "1..$((n_sizes * n_nodes + n_runtime * n_nodes * n_sysctl))"
test_no=0

# Boot-time pages: what the kernel allocated for hugepages=, per node, then touched.
for kb in $sizes; do
	for node in $nodes; do
		test_no=$((test_no + 1))
		name="boot size_kb=$kb node=$node"
		dir=$(node_dir "$node" "$kb")
		if [ ! -d "$dir" ]; then
			echo "# hvo: $name sysfs=absent"
			echo "# hvo: $name $(hvoh touch $((kb * 1024)) 1 "$node")"
			echo "ok $test_no $name # SKIP no $dir"
			continue
		fi
		mark "$name"
		nr=$(cat "$dir/nr_hugepages")
		free=$(cat "$dir/free_hugepages")
		echo "# hvo: $name allocated=$nr free=$free"
		if [ "$free" -gt 0 ]; then
			out=$(hvoh touch $((kb * 1024)) "$free" "$node"); rc=$?
			echo "# hvo: $name touch_rc=$rc $out"
		fi
		# Releasing boot-time pages makes the kernel restore their vmemmap: the counters
		# then measure, per size, what HVO had saved on them at boot.
		echo "# hvo: $name before $(counters) nr=$nr"
		echo 0 > "$dir/nr_hugepages" 2>/dev/null; release_rc=$?
		echo "# hvo: $name released $(counters) nr=$(cat "$dir/nr_hugepages") release_rc=$release_rc"
		echo "ok $test_no $name"
	done
done

# Run-time pages: allocate per node through sysfs with each sysctl value, touch, release.
for value in ${sysctl_values:-keep}; do
	if [ "$value" != keep ]; then
		if [ -f $sysctl ]; then
			echo "$value" > $sysctl 2>/dev/null; set_rc=$?
			echo "# hvo: sysctl set=$value rc=$set_rc now=$(cat $sysctl)"
		else
			echo "# hvo: sysctl set=$value rc=absent"
		fi
	fi
	sysctl_now=$( [ -f $sysctl ] && cat $sysctl || echo absent)
	for item in $runtime; do
		kb=${item%%:*}
		want=${item##*:}
		for node in $nodes; do
			test_no=$((test_no + 1))
			name="runtime size_kb=$kb node=$node sysctl=$sysctl_now"
			dir=$(node_dir "$node" "$kb")
			if [ ! -d "$dir" ]; then
				echo "# hvo: $name requested=$want sysfs=absent"
				echo "# hvo: $name $(hvoh touch $((kb * 1024)) 1 "$node")"
				echo "ok $test_no $name # SKIP no $dir"
				continue
			fi
			mark "$name"
			before=$(cat "$dir/nr_hugepages")
			echo "# hvo: $name before $(counters) nr=$before"
			echo $((before + want)) > "$dir/nr_hugepages" 2>/dev/null; write_rc=$?
			after=$(cat "$dir/nr_hugepages")
			echo "# hvo: $name after $(counters) nr=$after write_rc=$write_rc requested=$want allocated=$((after - before))"
			if [ $((after - before)) -gt 0 ]; then
				out=$(hvoh touch $((kb * 1024)) $((after - before)) "$node"); rc=$?
				echo "# hvo: $name touch_rc=$rc $out"
			fi
			echo "$before" > "$dir/nr_hugepages" 2>/dev/null; release_rc=$?
			echo "# hvo: $name released $(counters) nr=$(cat "$dir/nr_hugepages") release_rc=$release_rc"
			echo "ok $test_no $name"
		done
	done
done
echo "# hvo: done"
