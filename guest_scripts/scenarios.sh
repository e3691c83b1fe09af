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
# Its exit status is reported (mark_rc): without the marker, attribution is impossible.
mark() { echo "hvo-harness: scenario $1" > /dev/kmsg 2>/dev/null; }
# /proc/sys/kernel/tainted before and after each scenario: a kernel report the host could not
# read still leaves its taint flag.
# (sysctl files give their value without a newline to a short read: read's status is no test.)
taint() { tainted=; read -r tainted < /proc/sys/kernel/tainted; : "${tainted:=unreadable}"; }

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
echo "# hvo: env page_size=$(hvoh pagesize) nodes=$(echo $nodes | tr ' ' ,) registered=$(ls /sys/kernel/mm/hugepages 2>/dev/null | sed 's/hugepages-//' | tr '\n' ' ' | sed 's/ $//' | tr ' ' ,) sysctl=$( [ -f $sysctl ] && cat $sysctl || echo absent) release=$(uname -r) machine=$(uname -m) tainted=$(cat /proc/sys/kernel/tainted)"
echo "# hvo: env-counters $(counters)"
echo "1..$((n_sizes * n_nodes + n_runtime * n_nodes * n_sysctl))"
test_no=0
# "not ok" where the guest itself saw a step fail; the host judges every value either way.
ktap_result() {
	if [ "$1" = 0 ] && [ "$2" = 0 ]; then
		echo "ok $test_no $3"
	else
		echo "not ok $test_no $3 # touch_rc=$1 release_rc=$2"
	fi
}

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
		mark "$name"; mark_rc=$?
		taint
		read -r nr < "$dir/nr_hugepages"
		read -r free < "$dir/free_hugepages"
		echo "# hvo: $name allocated=$nr free=$free mark_rc=$mark_rc tainted_before=$tainted"
		rc=0
		if [ "$nr" -gt 0 ]; then
			# Every page the kernel allocated, not only the free ones: a page that is not
			# free at this point is one the scenario cannot vouch for.
			out=$(hvoh touch $((kb * 1024)) "$nr" "$node"); rc=$?
			echo "# hvo: $name touch_rc=$rc $out"
		fi
		# Releasing boot-time pages makes the kernel restore their vmemmap: the counters
		# then measure, per size, what HVO had saved on them at boot.
		echo "# hvo: $name before $(counters) nr=$nr"
		echo 0 > "$dir/nr_hugepages" 2>/dev/null; release_rc=$?
		read -r nr_now < "$dir/nr_hugepages"
		read -r surplus < "$dir/surplus_hugepages"
		taint
		echo "# hvo: $name released $(counters) nr=$nr_now surplus=$surplus release_rc=$release_rc tainted_after=$tainted"
		ktap_result "$rc" "$release_rc" "$name"
	done
done

# Run-time pages: allocate per node through sysfs with each sysctl value, touch, release.
for value in ${sysctl_values:-keep}; do
	# A pass is named by the value asked for; what the sysctl then read is reported beside it,
	# so a write that did not take is seen as such, not as another pass of the old value.
	pass=absent set_rc=absent sysctl_now=absent
	if [ "$value" != keep ]; then
		pass=$value
		echo "$value" > $sysctl 2>/dev/null; set_rc=$?
		read -r sysctl_now < $sysctl
		echo "# hvo: sysctl set=$value rc=$set_rc now=$sysctl_now"
	fi
	for item in $runtime; do
		kb=${item%%:*}
		want=${item##*:}
		for node in $nodes; do
			test_no=$((test_no + 1))
			name="runtime size_kb=$kb node=$node sysctl=$pass"
			dir=/sys/devices/system/node/node$node/hugepages/hugepages-${kb}kB
			if [ ! -d "$dir" ]; then
				echo "# hvo: $name requested=$want sysfs=absent"
				echo "# hvo: $name $(hvoh touch $((kb * 1024)) 1 "$node")"
				echo "ok $test_no $name # SKIP no $dir"
				continue
			fi
			mark "$name"; mark_rc=$?
			taint
			read -r before < "$dir/nr_hugepages"
			echo "# hvo: $name before $(counters) nr=$before mark_rc=$mark_rc tainted_before=$tainted sysctl_now=$sysctl_now sysctl_rc=$set_rc"
			echo $((before + want)) > "$dir/nr_hugepages" 2>/dev/null; write_rc=$?
			read -r after < "$dir/nr_hugepages"
			echo "# hvo: $name after $(counters) nr=$after write_rc=$write_rc requested=$want allocated=$((after - before))"
			rc=0
			if [ $((after - before)) -gt 0 ]; then
				out=$(hvoh touch $((kb * 1024)) $((after - before)) "$node"); rc=$?
				echo "# hvo: $name touch_rc=$rc $out"
			fi
			echo "$before" > "$dir/nr_hugepages" 2>/dev/null; release_rc=$?
			read -r nr_now < "$dir/nr_hugepages"
			read -r surplus < "$dir/surplus_hugepages"
			taint
			echo "# hvo: $name released $(counters) nr=$nr_now surplus=$surplus release_rc=$release_rc tainted_after=$tainted"
			ktap_result "$rc" "$release_rc" "$name"
		done
	done
done
echo "# hvo: done"
