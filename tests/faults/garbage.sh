#!/bin/sh
# Fault: random bytes and terminal escape sequences on the console, before and during the
# scenarios (about 300 KB). None of it is a kernel report; the results channel is untouched.
noise() {
	head -c "$1" /dev/urandom
	# Clear screen, home, OSC title, alternate screen, colours and blink, DEC line drawing,
	# a cursor position query, OSC 52 clipboard, a DCS query, a full reset, stray CR and NUL.
	printf '\033[2J\033[H\033]0;hvo-fault\007\033[?1049h\033[31;1;5m\033(0\033[6n'
	printf '\033]52;c;aHZvLWZhdWx0\007\033P+q544e\033\\\033c\r\000\033[0m\033(B\033[?1049l\n'
}
noise 150000 > /dev/console
(
	for i in 1 2 3 4 5; do
		sleep 2
		noise 30000
	done
) > /dev/console 2>&1 &
/bin/sh /hvo/scenarios-real.sh
wait
