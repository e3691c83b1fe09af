// SPDX-License-Identifier: GPL-2.0
/*
 * hvoh: the guest helper for what busybox cannot do: map huge pages with MAP_HUGETLB,
 * touch and read them back, and read /proc/self/pagemap and /proc/kpageflags the way the
 * kernel's selftests/mm/hugepage-vmemmap.c does. Built static against nolibc (no libc for
 * riscv64/loong64 here). It reports key=value pairs on one line; the host judges.
 *
 *   hvoh pagesize
 *   hvoh touch SIZE_BYTES COUNT NODE
 *   hvoh kmsg [TAG]      stream /dev/kmsg, a record a line, until "hvo-harness: kmsg end"
 *   hvoh frame TAG       copy stdin to stdout, each line as "TAG CRC32 line"
 *
 * kmsg: every record of the kernel log with its level, sequence number and time stamp, as
 * /dev/kmsg gives it ("6,123,4567890,-;text"), so that no console log level can hide a report
 * from the host. A record overwritten before it was read (EPIPE) is reported as a line
 * "hvo-kmsg: lost", and reading goes on. With TAG (the console channel, where kernel output
 * can cut into a line) each line is framed as in `frame`.
 * frame: each line is "TAG CRC32 SEQ line" (the CRC-32, IEEE, of "SEQ line"); the host keeps
 * only lines whose CRC matches, so kernel text that landed inside a line on a shared console
 * drops that line instead of changing its values. Kernel output comes at any time there (the
 * console's printer can lag seconds behind under load), so both send everything twice: frame
 * all lines again at the end of its input, kmsg all records again after its end record, once
 * the guest is quiet; the host takes the first good copy of each line or record.
 */
#include <linux/mman.h>
#include <linux/mempolicy.h>

#define KPF_COMPOUND_HEAD 15
#define KPF_COMPOUND_TAIL 16
#define KPF_HUGE 17
#define PM_PRESENT (1ULL << 63)
#define PM_PFN_MASK ((1ULL << 55) - 1)

static unsigned long page_size;

static long sys_pread(int fd, void *buf, unsigned long count, long offset)
{
	return syscall(__NR_pread64, fd, buf, count, offset);
}

static long sys_set_mempolicy(int mode, const unsigned long *mask, unsigned long maxnode)
{
	return syscall(__NR_set_mempolicy, mode, mask, maxnode);
}

static long sys_move_pages(unsigned long count, void **pages, int *status)
{
	return syscall(__NR_move_pages, 0, count, pages, 0, status, 0);
}

static const char *errno_name(int err)
{
	switch (err) {
	case EINVAL: return "EINVAL";
	case ENOMEM: return "ENOMEM";
	case EPERM: return "EPERM";
	case EACCES: return "EACCES";
	case ENOENT: return "ENOENT";
	case EFAULT: return "EFAULT";
	case EBUSY: return "EBUSY";
	case ENODEV: return "ENODEV";
	default: return "E?";
	}
}

static unsigned long parse_ulong(const char *s)
{
	unsigned long v = 0;

	while (*s >= '0' && *s <= '9')
		v = v * 10 + (unsigned long)(*s++ - '0');
	return v;
}

static int log2_ulong(unsigned long v)
{
	int n = -1;

	while (v) {
		v >>= 1;
		n++;
	}
	return n;
}

/* pagemap entry of the base page at addr: PFN, or 0 when absent/unreadable. */
static unsigned long long pfn_of(int pagemap, unsigned long addr)
{
	unsigned long long entry = 0;

	if (sys_pread(pagemap, &entry, sizeof(entry), (long)(addr / page_size * 8)) != 8)
		return 0;
	if (!(entry & PM_PRESENT))
		return 0;
	return entry & PM_PFN_MASK;
}

static int touch(unsigned long size, unsigned long count, int node)
{
	unsigned long nodemask[1] = { 1UL << node };
	unsigned long per_page = size / page_size;
	unsigned long flags_len = (per_page + 1) * 8;
	unsigned long long *flags;
	unsigned long i, off, readback_errors = 0, head_bad = 0, tail_bad = 0, after_bad = 0;
	unsigned long pfn_absent = 0, wrong_node = 0, checked_tails = 0, touched = 0;
	int pagemap, kpageflags, first_node = -1;
	char *map;

	if (sys_set_mempolicy(MPOL_BIND, nodemask, sizeof(nodemask) * 8 + 1) < 0) {
		printf("mempolicy_errno=%s\n", errno_name(errno));
		return 2;
	}
	map = mmap(NULL, size * count, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB |
		   ((unsigned long)log2_ulong(size) << MAP_HUGE_SHIFT), -1, 0);
	if (map == MAP_FAILED) {
		printf("mapped=0 mmap_errno=%s\n", errno_name(errno));
		return 2;
	}
	/* Write every base page of every huge page, then read all of it back. */
	for (i = 0; i < count; i++) {
		for (off = 0; off < size; off += page_size)
			*(unsigned long *)(map + i * size + off) = (i << 40) ^ off ^ 0x5a5a5a5aUL;
		touched++;
	}
	for (i = 0; i < count; i++)
		for (off = 0; off < size; off += page_size)
			if (*(unsigned long *)(map + i * size + off) != ((i << 40) ^ off ^ 0x5a5a5a5aUL))
				readback_errors++;

	pagemap = open("/proc/self/pagemap", O_RDONLY);
	kpageflags = open("/proc/kpageflags", O_RDONLY);
	flags = mmap(NULL, flags_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (pagemap < 0 || kpageflags < 0 || flags == MAP_FAILED) {
		printf("mapped=%lu touched=%lu readback_errors=%lu kpageflags=unreadable\n",
		       count, touched, readback_errors);
		return 2;
	}
	for (i = 0; i < count; i++) {
		void *addr = map + i * size;
		unsigned long long pfn = pfn_of(pagemap, (unsigned long)addr);
		int status = -1;
		long got;

		if (sys_move_pages(1, &addr, &status) == 0) {
			if (first_node < 0)
				first_node = status;
			if (status != node)
				wrong_node++;
		}
		if (!pfn) {
			pfn_absent++;
			continue;
		}
		/* The flags of the head, every tail, and the page right after the huge page. */
		got = sys_pread(kpageflags, flags, flags_len, (long)(pfn * 8));
		if (got < (long)(per_page * 8)) {
			pfn_absent++;
			continue;
		}
		if (!((flags[0] >> KPF_COMPOUND_HEAD) & 1) || !((flags[0] >> KPF_HUGE) & 1))
			head_bad++;
		for (off = 1; off < per_page; off++) {
			checked_tails++;
			/* As selftests/mm/hugepage-vmemmap.c: tail and huge, and not a head. */
			if (!((flags[off] >> KPF_COMPOUND_TAIL) & 1) || !((flags[off] >> KPF_HUGE) & 1) ||
			    ((flags[off] >> KPF_COMPOUND_HEAD) & 1))
				tail_bad++;
		}
		/* The page after the last tail starts something else: it cannot be a tail. */
		if (got == (long)flags_len && ((flags[per_page] >> KPF_COMPOUND_TAIL) & 1))
			after_bad++;
	}
	printf("mapped=%lu touched=%lu readback_errors=%lu pfn_absent=%lu head_flags_bad=%lu "
	       "tail_flags_bad=%lu tails_checked=%lu next_page_bad=%lu wrong_node=%lu first_node=%d\n",
	       count, touched, readback_errors, pfn_absent, head_bad, tail_bad, checked_tails,
	       after_bad, wrong_node, first_node);
	munmap(map, size * count);
	return readback_errors || pfn_absent || head_bad || tail_bad || after_bad || wrong_node ? 1 : 0;
}

static unsigned int crc32(const char *data, unsigned long len)
{
	unsigned int crc = 0xffffffffu;
	unsigned long i;
	int bit;

	for (i = 0; i < len; i++) {
		crc ^= (unsigned char)data[i];
		for (bit = 0; bit < 8; bit++)
			crc = (crc >> 1) ^ (0xedb88320u & -(crc & 1u));
	}
	return ~crc;
}

/* One write() per line: a tty never interleaves two writers inside one write. */
static void put_line(const char *tag, const char *line, unsigned long len)
{
	static char out[8192 + 64];
	static const char hex[] = "0123456789abcdef";
	unsigned long n = 0, i;
	unsigned int crc;

	if (len > 8192)
		len = 8192;
	if (tag) {
		crc = crc32(line, len);
		while (*tag)
			out[n++] = *tag++;
		out[n++] = ' ';
		for (i = 0; i < 8; i++)
			out[n++] = hex[(crc >> (28 - 4 * i)) & 0xf];
		out[n++] = ' ';
	}
	memcpy(out + n, line, len);
	n += len;
	out[n++] = '\n';
	write(1, out, n);
}

static int kmsg_pass(const char *tag);

static int kmsg(const char *tag)
{
	int rc = kmsg_pass(tag);

	if (rc == 0 && tag) {
		sleep(1);
		rc = kmsg_pass(tag);
	}
	return rc;
}

static int kmsg_pass(const char *tag)
{
	static char record[8192];
	static const char end[] = ";hvo-harness: kmsg end";
	int fd = open("/dev/kmsg", O_RDONLY);
	long got;
	char *eol;

	if (fd < 0) {
		put_line(tag, "hvo-kmsg: unreadable", 20);
		return 2;
	}
	for (;;) {
		got = read(fd, record, sizeof(record) - 1);
		if (got < 0 && errno == EPIPE) {
			put_line(tag, "hvo-kmsg: lost", 14);
			continue;
		}
		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0)
			return 1;
		record[got] = 0;
		/* The record's first line; the " KEY=value" dictionary lines after it are dropped. */
		eol = strchr(record, '\n');
		if (eol)
			got = eol - record;
		put_line(tag, record, (unsigned long)got);
		/* The guest's last record: everything before it has been sent. */
		if (got >= (long)sizeof(end) - 1 &&
		    !memcmp(record + got - (sizeof(end) - 1), end, sizeof(end) - 1)) {
			close(fd);
			return 0;
		}
	}
}

/* "SEQ line" into out; its length. */
static unsigned long numbered(char *out, unsigned long seq, const char *line, unsigned long len)
{
	char digits[24];
	unsigned long n = 0, d = 0;

	do {
		digits[d++] = (char)('0' + seq % 10);
		seq /= 10;
	} while (seq);
	while (d)
		out[n++] = digits[--d];
	out[n++] = ' ';
	memcpy(out + n, line, len);
	return n + len;
}

/* Send one numbered line and keep it for the second copy: its length, then the line. */
static void send_and_keep(const char *tag, char *kept, unsigned long size, unsigned long *used,
			  unsigned long seq, const char *line, unsigned long n)
{
	char out[8192 + 32];
	unsigned long len = numbered(out, seq, line, n);

	put_line(tag, out, len);
	if (*used + len + sizeof(len) <= size) {
		memcpy(kept + *used, &len, sizeof(len));
		memcpy(kept + *used + sizeof(len), out, len);
		*used += sizeof(len) + len;
	}
}

static int frame(const char *tag)
{
	static char buf[8192], line[8192], kept[1 << 20];
	unsigned long n = 0, seq = 0, used = 0, off, len;
	long got, i;

	while ((got = read(0, buf, sizeof(buf))) > 0 || (got < 0 && errno == EINTR)) {
		for (i = 0; i < got; i++) {
			if (buf[i] != '\n') {
				if (n < sizeof(line))
					line[n++] = buf[i];
				continue;
			}
			send_and_keep(tag, kept, sizeof(kept), &used, seq++, line, n);
			n = 0;
		}
	}
	if (n)
		send_and_keep(tag, kept, sizeof(kept), &used, seq++, line, n);
	sleep(1);
	for (off = 0; off < used; off += sizeof(len) + len) {
		memcpy(&len, kept + off, sizeof(len));
		put_line(tag, kept + off + sizeof(len), len);
	}
	return 0;
}

int main(int argc, char **argv)
{
	page_size = getauxval(AT_PAGESZ);
	if (argc == 2 && !strcmp(argv[1], "pagesize")) {
		printf("%lu\n", page_size);
		return 0;
	}
	if (argc == 5 && !strcmp(argv[1], "touch"))
		return touch(parse_ulong(argv[2]), parse_ulong(argv[3]), (int)parse_ulong(argv[4]));
	if ((argc == 2 || argc == 3) && !strcmp(argv[1], "kmsg"))
		return kmsg(argc == 3 ? argv[2] : NULL);
	if (argc == 3 && !strcmp(argv[1], "frame"))
		return frame(argv[2]);
	printf("usage: hvoh pagesize | hvoh touch SIZE_BYTES COUNT NODE | hvoh kmsg [TAG] | hvoh frame TAG\n");
	return 64;
}
