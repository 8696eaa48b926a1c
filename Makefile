# emad - build, test and install. See README.md.
#
#   make            build emad, emactl, toy_trainer, libemaclient.{a,so} (into build/)
#   make check      install missing Debian packages, build everything also
#                   under ASan+UBSan, run every test
#   make demo       start emad on a temporary socket, train build/toy_trainer
#                   against it, show emactl show and status, stop emad
#   make install    PREFIX=/usr/local DESTDIR= (binaries, library, header,
#                   emaclient.pc, systemd units); make uninstall; make clean

VERSION      := 0.1.0
SOVERSION    := 0
PREFIX       ?= /usr/local
BINDIR       ?= $(PREFIX)/bin
LIBDIR       ?= $(PREFIX)/lib
INCLUDEDIR   ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
UNITDIR      ?= $(PREFIX)/lib/systemd/system
USERUNITDIR  ?= $(PREFIX)/lib/systemd/user
DESTDIR      ?=

PKG_CONFIG ?= pkg-config
AR         ?= ar
# Evaluated lazily: `make check` installs the packages before using them.
DEPS_CFLAGS   = $(shell $(PKG_CONFIG) --cflags libuv msgpack)
DEPS_LIBS     = $(shell $(PKG_CONFIG) --libs libuv msgpack) -lm -lpthread
CMOCKA_CFLAGS = $(shell $(PKG_CONFIG) --cflags cmocka)
CMOCKA_LIBS   = $(shell $(PKG_CONFIG) --libs cmocka)

CFLAGS   ?= -O2 -g
WARNINGS := -Wall -Wextra -Werror
# -ffp-contract=off: the kernels must round exactly as PyTorch does; the
# compiler may not fuse multiplies and adds behind our back.
BASE_CFLAGS = -std=gnu11 $(WARNINGS) -D_GNU_SOURCE -fPIC -ffp-contract=off \
              -Iproto -Idaemon -Iclient $(DEPS_CFLAGS)
SAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
TSAN_FLAGS := -fsanitize=thread -fno-omit-frame-pointer

PROTO_SRC  := $(wildcard proto/*.c)
DAEMON_SRC := $(filter-out daemon/main.c,$(wildcard daemon/*.c))
CLIENT_SRC := client/emaclient.c
EMACTL_SRC := client/emactl.c client/json.c
TOY_SRC    := client/toy_trainer.c
TEST_SRC   := $(wildcard tests/test_*.c)
ITEST_SRC  := $(wildcard tests/integration/test_*.c)

# Debian 12 packages the build, the tests and the demo need.
DEB_PACKAGES := gcc make pkg-config libuv1-dev libmsgpack-dev libcmocka-dev \
                systemd util-linux procps

# Keep test objects: they are intermediate files of the pattern rules.
.SECONDARY:

.PHONY: FORCE all check check-run demo deps install uninstall clean tests bench bench-quick
all: build/emad build/emactl build/toy_trainer build/libemaclient.a build/libemaclient.so

# $(1) object dir, $(2) output dir, $(3) extra compiler and linker flags
define VARIANT
$(1)/%.o: %.c
	@mkdir -p $$(@D)
	$$(CC) $$(BASE_CFLAGS) $$(CFLAGS) $(3) $$(if $$(findstring tests/,$$<),$$(CMOCKA_CFLAGS)) -MMD -MP -c $$< -o $$@

$(2)/libproto.a: $(PROTO_SRC:%.c=$(1)/%.o)
	@mkdir -p $$(@D)
	rm -f $$@ && $$(AR) rcs $$@ $$^

$(2)/libemad.a: $(DAEMON_SRC:%.c=$(1)/%.o)
	@mkdir -p $$(@D)
	rm -f $$@ && $$(AR) rcs $$@ $$^

$(2)/libemaclient.a: $(CLIENT_SRC:%.c=$(1)/%.o) $(PROTO_SRC:%.c=$(1)/%.o)
	@mkdir -p $$(@D)
	rm -f $$@ && $$(AR) rcs $$@ $$^

$(2)/emad: $(1)/daemon/main.o $(2)/libemad.a $(2)/libproto.a
	$$(CC) $$(CFLAGS) $(3) -o $$@ $$^ $$(DEPS_LIBS)

$(2)/emactl: $(EMACTL_SRC:%.c=$(1)/%.o) $(2)/libemaclient.a
	$$(CC) $$(CFLAGS) $(3) -o $$@ $$^ $$(DEPS_LIBS)

$(2)/toy_trainer: $(TOY_SRC:%.c=$(1)/%.o) $(2)/libemaclient.a
	$$(CC) $$(CFLAGS) $(3) -o $$@ $$^ $$(DEPS_LIBS)

# Static patterns: each rule applies to its own list only, so an integration
# test can never be linked by the unit-test rule (without the harness).
$(TEST_SRC:%.c=$(2)/%): $(2)/tests/%: $(1)/tests/%.o $(2)/libemad.a $(2)/libemaclient.a $(2)/libproto.a
	@mkdir -p $$(@D)
	$$(CC) $$(CFLAGS) $(3) -o $$@ $$^ $$(CMOCKA_LIBS) $$(DEPS_LIBS)

$(ITEST_SRC:%.c=$(2)/%): $(2)/tests/integration/%: $(1)/tests/integration/%.o $(1)/tests/integration/harness.o $(2)/libemaclient.a $(2)/libproto.a
	@mkdir -p $$(@D)
	$$(CC) $$(CFLAGS) $(3) -o $$@ $$^ $$(CMOCKA_LIBS) $$(DEPS_LIBS)

-include $$(wildcard $(1)/*/*.d $(1)/*/*/*.d)
endef

$(eval $(call VARIANT,build/obj,build,))
$(eval $(call VARIANT,build/asan-obj,build/asan,$(SAN_FLAGS)))
$(eval $(call VARIANT,build/tsan-obj,build/tsan,$(TSAN_FLAGS)))

build/libemaclient.so: $(CLIENT_SRC:%.c=build/obj/%.o) $(PROTO_SRC:%.c=build/obj/%.o) client/emaclient.map
	$(CC) -shared -Wl,-soname,libemaclient.so.$(SOVERSION) \
	    -Wl,--version-script=client/emaclient.map -Wl,--no-undefined \
	    -o $@ $(filter %.o,$^) $(shell $(PKG_CONFIG) --libs msgpack)

build/emaclient.pc: client/emaclient.pc.in
	@mkdir -p $(@D)
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' \
	    -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' -e 's|@VERSION@|$(VERSION)|' $< > $@

# Always regenerated: BINDIR may differ from one make invocation to the next.
build/systemd/%: systemd/% FORCE
	@mkdir -p $(@D)
	sed -e 's|@BINDIR@|$(BINDIR)|g' $< > $@

UNITS := emad.service emad.socket
USER_UNITS := emad-user.service emad-user.socket

# Every test in three builds: plain, ASan+UBSan, and ThreadSanitizer (the
# worker pool and everything around it).
# The integration tests themselves are single-threaded: under TSan only emad
# and emactl are instrumented, driven by the plain test binaries.
TESTS := $(foreach v,build build/asan,$(TEST_SRC:%.c=$(v)/%) $(ITEST_SRC:%.c=$(v)/%)) \
         $(TEST_SRC:%.c=build/tsan/%)
tests: all build/asan/emad build/asan/emactl build/tsan/emad build/tsan/emactl $(TESTS)

# Benchmarks: no assertions, figures beside a baseline measured in the same
# run. -O3 so that the plain-loop baseline is as fast as the compiler can make it.
build/bench/bench_update: tests/bench/bench_update.c build/libemaclient.a
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) -O3 -g -o $@ $< build/libemaclient.a $(DEPS_LIBS)

bench: all build/bench/bench_update
	build/bench/bench_update --emad build/emad --json build/bench/results.json

bench-quick: all build/bench/bench_update
	build/bench/bench_update --quick --emad build/emad --json build/bench/results.json

deps:
	@missing=""; \
	for p in $(DEB_PACKAGES); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' \
	        || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
	    echo "make deps: missing Debian packages:$$missing" >&2; \
	    echo "make deps: run 'sudo make deps' or 'sudo apt-get install$$missing'" >&2; \
	    exit 1; \
	fi; \
	echo "make deps: installing$$missing"; \
	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing

check: deps
	@$(MAKE) --no-print-directory check-run

check-run: tests
	@tests/run

demo: deps
	@$(MAKE) --no-print-directory all
	@client/demo.sh build

install: all build/emaclient.pc $(addprefix build/systemd/,$(UNITS) $(USER_UNITS))
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR) \
	    $(DESTDIR)$(PKGCONFIGDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(USERUNITDIR)
	install -m 0755 build/emad build/emactl $(DESTDIR)$(BINDIR)/
	install -m 0644 build/libemaclient.a $(DESTDIR)$(LIBDIR)/
	install -m 0755 build/libemaclient.so $(DESTDIR)$(LIBDIR)/libemaclient.so.$(VERSION)
	ln -sf libemaclient.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libemaclient.so.$(SOVERSION)
	ln -sf libemaclient.so.$(SOVERSION) $(DESTDIR)$(LIBDIR)/libemaclient.so
	install -m 0644 client/emaclient.h $(DESTDIR)$(INCLUDEDIR)/
	install -m 0644 build/emaclient.pc $(DESTDIR)$(PKGCONFIGDIR)/
	install -m 0644 build/systemd/emad.service build/systemd/emad.socket $(DESTDIR)$(UNITDIR)/
	install -m 0644 build/systemd/emad-user.service $(DESTDIR)$(USERUNITDIR)/emad.service
	install -m 0644 build/systemd/emad-user.socket $(DESTDIR)$(USERUNITDIR)/emad.socket

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/emad $(DESTDIR)$(BINDIR)/emactl \
	    $(DESTDIR)$(LIBDIR)/libemaclient.a $(DESTDIR)$(LIBDIR)/libemaclient.so \
	    $(DESTDIR)$(LIBDIR)/libemaclient.so.$(SOVERSION) \
	    $(DESTDIR)$(LIBDIR)/libemaclient.so.$(VERSION) \
	    $(DESTDIR)$(INCLUDEDIR)/emaclient.h $(DESTDIR)$(PKGCONFIGDIR)/emaclient.pc \
	    $(DESTDIR)$(UNITDIR)/emad.service $(DESTDIR)$(UNITDIR)/emad.socket \
	    $(DESTDIR)$(USERUNITDIR)/emad.service $(DESTDIR)$(USERUNITDIR)/emad.socket

clean:
	rm -rf build
