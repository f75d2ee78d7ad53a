# ringproxy — a memcached proxy that resizes pools without losing the cache.
#
#   make            build build/ringproxy (optimised, -Werror)
#   make run        install what is missing, build, run a local sandbox cluster
#                   (its own Redis on a free port; Ctrl-C stops it, exit 0)
#   make test       install what is missing, then unit tests, ring compatibility,
#                   integration tests and memccapable, all under ASan+UBSan
#   make chaos      the resize checker (tests/chaos): every scenario, ASan build
#   make chaos-fast its fast subset (pytest -m fast)
#   make chaos-threads  every scenario with every proxy on 2 threads
#   make test-threads  the integration tests with every proxy on 2 threads
#   make bench      ringproxy vs direct memcached vs twemproxy, same run
#   make fuzz       libFuzzer on every parser of untrusted input (clang),
#                   FUZZ_SECONDS (60) each; make fuzz-smoke: 10 s each
#   make install PREFIX=/usr/local   the binary, ringproxy(8), the systemd unit

PREFIX  ?= /usr/local
CC      ?= cc
PKGS    := libevent hiredis yaml-0.1 libmd
SAN     ?= 0

ifeq ($(SAN),1)
BUILD   ?= build/san
OPT     := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined \
           -fno-sanitize-recover=undefined
else ifeq ($(SAN),thread)
BUILD   ?= build/tsan
OPT     := -O1 -g -fno-omit-frame-pointer -fsanitize=thread
else
BUILD   ?= build
OPT     := -O2 -g
endif

CFLAGS  ?=
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow \
           -Wstrict-prototypes -Wmissing-prototypes -ffp-contract=off \
           $(OPT) $(shell pkg-config --cflags $(PKGS))
LDFLAGS += $(OPT)
LDLIBS  += $(shell pkg-config --libs $(PKGS)) -lm
CHECK_LIBS := $(shell pkg-config --libs check 2>/dev/null)

SRCS    := $(filter-out src/main.c,$(wildcard src/*.c))
# Files kept in the tree as themselves and compiled in (below).
EMBED   := status_page_html
OBJS    := $(patsubst src/%.c,$(BUILD)/obj/%.o,$(SRCS)) \
           $(patsubst %,$(BUILD)/obj/%.o,$(EMBED))
UNIT    := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(wildcard tests/unit/test_*.c))
BIN     := $(BUILD)/ringproxy

.PHONY: all deps run test unit compat integration capable chaos chaos-fast chaos-threads \
        chaos-run tsan tsan-fast tsan-run test-threads test-threads-run bench fuzz fuzz-smoke install clean \
        compile_commands.json
all: $(BIN) $(BUILD)/loadgen

deps:
	@./scripts/install-deps.sh

$(BUILD)/obj/%.o: src/%.c $(wildcard src/*.h) | $(BUILD)/obj
	$(CC) $(CFLAGS) -c -o $@ $<

# The status page is edited as HTML (src/status_page.html) and compiled in as
# a byte array, NUL after it, by od and sed (POSIX: no tool to install, and
# the build needs only the Makefile and src/); src/status_page.h declares it.
$(BUILD)/gen/status_page_html.c: src/status_page.html | $(BUILD)/gen
	{ echo '/* Generated from $< by the Makefile: edit that file. */'; \
	  echo '#include <stddef.h>'; echo '#include "status_page.h"'; \
	  echo 'const unsigned char status_page_html[] = {'; \
	  od -An -v -tx1 $< | sed -e 's/ *\([0-9a-f][0-9a-f]\)/0x\1,/g'; \
	  echo '0x00 };'; \
	  echo "const size_t status_page_html_len = $$(wc -c < $< | tr -d ' ');"; \
	} > $@.tmp && mv $@.tmp $@

$(BUILD)/obj/status_page_html.o: $(BUILD)/gen/status_page_html.c src/status_page.h | $(BUILD)/obj
	$(CC) $(CFLAGS) -Isrc -c -o $@ $<

# Rebuilt from scratch: an object whose source was removed must not linger.
$(BUILD)/libringproxy.a: $(OBJS)
	rm -f $@
	$(AR) rcs $@ $^

$(BIN): $(BUILD)/obj/main.o $(BUILD)/libringproxy.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/libringproxy.a $(wildcard src/*.h) tests/unit/check_run.h | $(BUILD)/tests
	$(CC) $(CFLAGS) -Isrc $(LDFLAGS) -o $@ $< $(BUILD)/libringproxy.a \
		$(LDLIBS) $(CHECK_LIBS)

$(BUILD)/compat_libmemcached: tests/compat/compat_libmemcached.c $(BUILD)/libringproxy.a | $(BUILD)
	$(CC) $(CFLAGS) -Isrc $(shell pkg-config --cflags libmemcached) $(LDFLAGS) \
		-o $@ $< $(BUILD)/libringproxy.a $(LDLIBS) \
		$(shell pkg-config --libs libmemcached)

$(BUILD)/loadgen: bench/loadgen.c | $(BUILD)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(LDLIBS)

$(BUILD) $(BUILD)/obj $(BUILD)/tests $(BUILD)/gen:
	mkdir -p $@

run: deps all
	./scripts/sandbox.sh

# `make test` is what the README and CI run: everything, under sanitizers.
test: deps
	$(MAKE) SAN=1 unit compat integration capable chaos-run CHAOS_ARGS="-m fast"
	$(MAKE) tsan-fast
	$(MAKE) fuzz-smoke SMOKE_SECONDS=3

# ThreadSanitizer on the whole integration suite, every proxy on two
# event-loop threads (-T 2: docs/ARCHITECTURE.md, "Threads"); a report fails
# the test whose proxy printed it (harness.py). The tests that bound memory
# by VmRSS through the rss_faithful fixture (conftest.py) are skipped
# there. About 6 minutes on 2 cores, so `make test` runs `tsan-fast`: the
# files that exercise the reload thread (proxy.c reload_run), the threads'
# hand-offs (of commands and of clients), the stats port and /status.json
# (they read the other threads' counters), a file at a time (TEST_JOBS=1)
# as `make test` has always run them.
# TSAN_TESTS replaces the files of either.
TSAN_FAST_TESTS = tests/integration/test_reload_limits.py tests/integration/test_process.py \
	tests/integration/test_daemon.py tests/integration/test_threads.py \
	tests/integration/test_upgrade.py tests/integration/test_dropin.py \
	tests/integration/test_status_page.py tests/integration/test_threads_balance.py
tsan:
	$(MAKE) SAN=thread tsan-run TSAN_TESTS='$(or $(TSAN_TESTS),tests/integration)'

tsan-fast:
	$(MAKE) SAN=thread tsan-run TEST_JOBS=1 TSAN_TESTS='$(or $(TSAN_TESTS),$(TSAN_FAST_TESTS))'

tsan-run: $(BIN) $(BUILD)/loadgen
	RINGPROXY_THREADS=2 RINGPROXY_BIN=$(abspath $(BIN)) /usr/bin/python3 -m pytest -q \
		$(PYTEST_JOBS) $(or $(TSAN_TESTS),tests/integration)

# The whole integration suite with every proxy on two event-loop threads
# (the harness passes -T $$RINGPROXY_THREADS; docs/ARCHITECTURE.md,
# "Threads"), on the ASan+UBSan build. Not part of `test` (its time).
test-threads:
	$(MAKE) SAN=1 test-threads-run

test-threads-run: $(BIN) $(BUILD)/loadgen
	RINGPROXY_THREADS=2 RINGPROXY_BIN=$(abspath $(BIN)) /usr/bin/python3 -m pytest -q \
		$(PYTEST_JOBS) tests/integration

unit: $(UNIT)
	@set -e; for t in $(UNIT); do echo "== $$t"; CK_FORK=yes $$t; done

compat: $(BUILD)/compat_libmemcached
	$(BUILD)/compat_libmemcached

# The integration files run on TEST_JOBS pytest-xdist workers, a file to a
# worker (their tests share module fixtures); each worker takes its servers'
# ports from a block of its own (tests/integration/harness.py, free_port).
# Most of a test's time is waiting for servers, so two workers nearly halve
# the suite on 2 cores. --durations: the slowest tests, for keeping `make
# test` under 15 minutes.
TEST_JOBS ?= 2
PYTEST_JOBS = $(if $(filter-out 0 1,$(TEST_JOBS)),-n $(TEST_JOBS) --dist loadfile)
integration: $(BIN) $(BUILD)/loadgen
	RINGPROXY_BIN=$(abspath $(BIN)) /usr/bin/python3 -m pytest -q --durations=12 \
		$(PYTEST_JOBS) tests/integration

capable: $(BIN)
	./tests/capable.sh $(BIN)

# The chaos checker runs the sanitizer build, as `integration` does under
# `make test`; CHAOS_ARGS selects (e.g. CHAOS_ARGS='-k stagger').
chaos:
	$(MAKE) SAN=1 chaos-run

# The checker with every proxy on two event-loop threads (not in `make
# test`, which must stay under 15 minutes on 2 cores): an indexed pool's
# copies route directly, then hand its commands to the home thread during
# the resize (docs/ARCHITECTURE.md, "Threads: indexed pools").
chaos-threads:
	RINGPROXY_THREADS=2 $(MAKE) SAN=1 chaos-run CHAOS_ARGS='$(CHAOS_ARGS)'

chaos-fast:
	$(MAKE) SAN=1 chaos-run CHAOS_ARGS='-m fast $(CHAOS_ARGS)'

chaos-run: $(BIN)
	RINGPROXY_BIN=$(abspath $(BIN)) /usr/bin/python3 -m pytest -q tests/chaos $(CHAOS_ARGS)

bench:
	@./scripts/install-deps.sh --bench
	$(MAKE) all
	./scripts/bench.sh

fuzz:
	@./scripts/install-deps.sh --fuzz
	$(MAKE) -C tests/fuzz

fuzz-smoke:
	@./scripts/install-deps.sh --fuzz
	$(MAKE) -C tests/fuzz smoke

# The binary, ringproxy(8), and the systemd unit with ExecStart pointing at
# this PREFIX (systemd also reads units from /usr/local/lib/systemd/system).
install: $(BIN)
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man8 \
		$(DESTDIR)$(PREFIX)/lib/systemd/system
	install -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/ringproxy
	install -m 0644 docs/ringproxy.8 $(DESTDIR)$(PREFIX)/share/man/man8/ringproxy.8
	sed 's|/usr/local/bin/ringproxy|$(PREFIX)/bin/ringproxy|' \
		dist/systemd/ringproxy.service >$(DESTDIR)$(PREFIX)/lib/systemd/system/ringproxy.service
	chmod 0644 $(DESTDIR)$(PREFIX)/lib/systemd/system/ringproxy.service

compile_commands.json:
	$(MAKE) clean && bear -- $(MAKE) all

clean:
	rm -rf build
