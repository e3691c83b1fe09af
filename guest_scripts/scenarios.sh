#!/bin/busybox sh
# Allocate huge pages at boot (already done by the kernel's hugepages=) and at run time,
# per node and per size, touch them, check their kpageflags, and report raw numbers as KTAP
# with "# hvo: key=value" diagnostic lines. The plan comes from the kernel command line:
#   hvo.sizes=KB,KB,...        huge page sizes in kB (as in /sys/kernel/mm/hugepages)
#   hvo.runtime=KB:N,...       pages per node to allocate at run time for each size
#   hvo.sysctl=V,...           hugetlb_optimize_vmemmap values, one run-time pass each
# Everything here is reported, never judged: the host decides pass, fail and skip.

# Forks cost ~15 ms each under TCG and a boot runs hundreds of them: builtins (read, case,
# arithmetic) stand in for cat, awk and subshells wherever they can.
read -r cmdline < /proc/cmdline
cmdline_value() {
	for word in $cmdline; do
		case "$word" in "$1="*) value=${word#*=}; return 0 ;; esac
	done
	value=""
	return 1
}

# One awk for both files: "memmap_pages=N memmap_boot_pages=N memfree_kb=N".
counters() {
	awk '$1 == "nr_memmap_pages" { m = $2 } $1 == "nr_memmap_boot_pages" { b = $2 }
		$1 == "MemFree:" { f = $2 }
		END { printf "memmap_pages=%s memmap_boot_pages=%s memfree_kb=%s\n",
			m == "" ? "absent" : m, b == "" ? "absent" : b, f }' /proc/vmstat /proc/meminfo
}

# A marker in the kernel log: the host attributes a WARN or BUG to the scenario it followed.
mark() { echo "hvo-harness: scenario $1" > /dev/kmsg; }

cmdline_value hvo.sizes; sizes=$(echo "$value" | tr , ' ')
cmdline_value hvo.runtime; runtime=$(echo "$value" | tr , ' ')
cmdline_value hvo.sysctl; sysctl_values=$(echo "$value" | tr , ' ')
nodes=$(cat /sys/devices/system/node/online 2>/dev/null | awk -F- '{ if (NF == 2) for (i = $1; i <= $2; i++) printf "%d ", i; else print $1 }')
[ -n "$nodes" ] || nodes=0
sysctl=/proc/sys/vm/hugetlb_optimize_vmemmap
# Without the sysctl (HVO not built in) there is nothing to switch: one run-time pass.
[ -f $sysctl ] || sysctl_values=""

count_words() { set -- $1; words=$#; }
count_words "$sizes"; n_sizes=$words
count_words "$nodes"; n_nodes=$words
count_words "$runtime"; n_runtime=$words
count_words "$sysctl_values"; n_sysctl=$words
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
		dir=/sys/devices/system/node/node$node/hugepages/hugepages-${kb}kB
		if [ ! -d "$dir" ]; then
			echo "# hvo: $name sysfs=absent"
			echo "# hvo: $name $(hvoh touch $((kb * 1024)) 1 "$node")"
			echo "ok $test_no $name # SKIP no $dir"
			continue
		fi
		mark "$name"
		read -r nr < "$dir/nr_hugepages"
		read -r free < "$dir/free_hugepages"
		echo "# hvo: $name allocated=$nr free=$free"
		if [ "$free" -gt 0 ]; then
			out=$(hvoh touch $((kb * 1024)) "$free" "$node"); rc=$?
			echo "# hvo: $name touch_rc=$rc $out"
		fi
		# Releasing boot-time pages makes the kernel restore their vmemmap: the counters
		# then measure, per size, what HVO had saved on them at boot.
		echo "# hvo: $name before $(counters) nr=$nr"
		echo 0 > "$dir/nr_hugepages" 2>/dev/null; release_rc=$?
		read -r nr_now < "$dir/nr_hugepages"
		echo "# hvo: $name released $(counters) nr=$nr_now release_rc=$release_rc"
		echo "ok $test_no $name"
	done
done

# Run-time pages: allocate per node through sysfs with each sysctl value, touch, release.
for value in ${sysctl_values:-keep}; do
	if [ "$value" != keep ]; then
		if [ -f $sysctl ]; then
			echo "$value" > $sysctl 2>/dev/null; set_rc=$?
			read -r now < $sysctl
			echo "# hvo: sysctl set=$value rc=$set_rc now=$now"
		else
			echo "# hvo: sysctl set=$value rc=absent"
		fi
	fi
	sysctl_now=absent
	[ -f $sysctl ] && read -r sysctl_now < $sysctl
	for item in $runtime; do
		kb=${item%%:*}
		want=${item##*:}
		for node in $nodes; do
			test_no=$((test_no + 1))
			name="runtime size_kb=$kb node=$node sysctl=$sysctl_now"
			dir=/sys/devices/system/node/node$node/hugepages/hugepages-${kb}kB
			if [ ! -d "$dir" ]; then
				echo "# hvo: $name requested=$want sysfs=absent"
				echo "# hvo: $name $(hvoh touch $((kb * 1024)) 1 "$node")"
				echo "ok $test_no $name # SKIP no $dir"
				continue
			fi
			mark "$name"
			read -r before < "$dir/nr_hugepages"
			echo "# hvo: $name before $(counters) nr=$before"
			echo $((before + want)) > "$dir/nr_hugepages" 2>/dev/null; write_rc=$?
			read -r after < "$dir/nr_hugepages"
			echo "# hvo: $name after $(counters) nr=$after write_rc=$write_rc requested=$want allocated=$((after - before))"
			if [ $((after - before)) -gt 0 ]; then
				out=$(hvoh touch $((kb * 1024)) $((after - before)) "$node"); rc=$?
				echo "# hvo: $name touch_rc=$rc $out"
			fi
			echo "$before" > "$dir/nr_hugepages" 2>/dev/null; release_rc=$?
			read -r nr_now < "$dir/nr_hugepages"
			echo "# hvo: $name released $(counters) nr=$nr_now release_rc=$release_rc"
			echo "ok $test_no $name"
		done
	done
done
echo "# hvo: done"
