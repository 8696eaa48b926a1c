# emad - build, test and install. See README.md.
#
#   make            build emad, emactl, toy_trainer, libemaclient.{a,so} (into build/)
#   make check      install missing Debian packages, build everything also
#                   under ASan+UBSan and TSan, run every test (docs/testing.md)
#   make demo       start emad on a temporary socket and state directory, train
#                   a small PyTorch CNN against it (build/toy_trainer without
#                   PyTorch), show emactl status and show, stop emad
#   make install    PREFIX=/usr/local DESTDIR= (binaries, library, header,
#                   emaclient.pc, systemd units, Python package, manual
#                   pages); make uninstall; make clean
#   make deb        the Debian package build/deb/emad_VERSION_ARCH.deb
#                   (packaging in systemd/debian/, docs/running.md)

VERSION      := 0.1.0
SOVERSION    := 0
PREFIX       ?= /usr/local
BINDIR       ?= $(PREFIX)/bin
LIBDIR       ?= $(PREFIX)/lib
INCLUDEDIR   ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
UNITDIR      ?= $(PREFIX)/lib/systemd/system
USERUNITDIR  ?= $(PREFIX)/lib/systemd/user
# Debian's python3 reads /usr/lib/python3/dist-packages; for PREFIX=/usr/local
# pass PYTHONDIR=/usr/local/lib/python3.11/dist-packages.
PYTHONDIR    ?= $(PREFIX)/lib/python3/dist-packages
MANDIR       ?= $(PREFIX)/share/man
# The user the system unit runs emad as; the Debian package makes and uses _emad.
EMAD_USER    ?= root
DESTDIR      ?=

PKG_CONFIG ?= pkg-config
AR         ?= ar
# Evaluated lazily: `make check` installs the packages before using them.
DEPS_CFLAGS   = $(shell $(PKG_CONFIG) --cflags libuv msgpack)
DEPS_LIBS     = $(shell $(PKG_CONFIG) --libs libuv msgpack) -lm -lpthread
# The daemon alone serves HTTP (--metrics): emad and what links libemad.a.
HTTPD_CFLAGS  = $(shell $(PKG_CONFIG) --cflags libmicrohttpd)
HTTPD_LIBS    = $(shell $(PKG_CONFIG) --libs libmicrohttpd)
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
CLIENT_SRC := client/conn.c client/reconnect.c client/segment.c client/session.c client/posthoc.c \
              client/shards.c client/shards_write.c client/shards_open.c client/shards_read.c \
              client/status.c client/snapshot.c client/export.c
CLIENT_SRC += client/shards_prof.c
CLIENT_SRC += client/shards_shape.c
EMACTL_SRC := client/emactl.c client/emactl_session.c client/emactl_gc.c client/emactl_out.c \
              client/emactl_top.c client/json.c client/emactl_ckpt.c \
              client/emactl_snap.c client/emactl_posthoc.c client/emactl_job.c
# Every module of the package: a list by hand left _device.py out.
PY_PACKAGE := $(wildcard client/python/emaclient/*.py)
TOY_SRC    := client/toy_trainer.c
TEST_SRC   := $(wildcard tests/test_*.c)
ITEST_SRC  := $(wildcard tests/integration/test_*.c)

# Debian 12 packages the build, the tests and the demo need; groff-base, man-db
# and bsdextrautils check the manual pages, debhelper, dpkg-dev and fakeroot
# build the Debian package (make deb).
DEB_PACKAGES := gcc make pkg-config libuv1-dev libmsgpack-dev libcmocka-dev libmicrohttpd-dev \
                systemd util-linux procps clang libclang-rt-14-dev tmux \
                python3 python3-torch python3-numpy python3-msgpack python3-matplotlib \
                groff-base man-db bsdextrautils debhelper dpkg-dev fakeroot prometheus

# Keep test objects: they are intermediate files of the pattern rules.
.SECONDARY:

.PHONY: FORCE all check check-run demo deps install uninstall clean tests bench bench-quick \
        fuzz fuzz-check fuzz-corpus
all: build/emad build/emactl build/toy_trainer build/libemaclient.a build/libemaclient.so

# $(1) object dir, $(2) output dir, $(3) extra compiler and linker flags
define VARIANT
$(1)/%.o: %.c
	@mkdir -p $$(@D)
	$$(CC) $$(BASE_CFLAGS) $$(CFLAGS) $(3) $$(if $$(findstring tests/,$$<),$$(CMOCKA_CFLAGS)) $$(if $$(findstring daemon/httpd,$$<),$$(HTTPD_CFLAGS)) -MMD -MP -c $$< -o $$@

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
	$$(CC) $$(CFLAGS) $(3) -o $$@ $$^ $$(DEPS_LIBS) $$(HTTPD_LIBS)

$(2)/emactl: $(EMACTL_SRC:%.c=$(1)/%.o) $(2)/libemaclient.a
	$$(CC) $$(CFLAGS) $(3) -o $$@ $$^ $$(DEPS_LIBS)

$(2)/toy_trainer: $(TOY_SRC:%.c=$(1)/%.o) $(2)/libemaclient.a
	$$(CC) $$(CFLAGS) $(3) -o $$@ $$^ $$(DEPS_LIBS)

# Static patterns: each rule applies to its own list only, so an integration
# test can never be linked by the unit-test rule (without the harness).
$(TEST_SRC:%.c=$(2)/%): $(2)/tests/%: $(1)/tests/%.o $(2)/libemad.a $(2)/libemaclient.a $(2)/libproto.a
	@mkdir -p $$(@D)
	$$(CC) $$(CFLAGS) $(3) -o $$@ $$^ $$(CMOCKA_LIBS) $$(DEPS_LIBS) $$(HTTPD_LIBS)

$(ITEST_SRC:%.c=$(2)/%): $(2)/tests/integration/%: $(1)/tests/integration/%.o $(1)/tests/integration/harness.o $(2)/libemaclient.a $(2)/libproto.a
	@mkdir -p $$(@D)
	$$(CC) $$(CFLAGS) $(3) -o $$@ $$^ $$(CMOCKA_LIBS) $$(DEPS_LIBS)

# test_json proves emactl's JSON printer, which no library holds.
$(2)/tests/test_json: $(1)/client/json.o

-include $$(wildcard $(1)/*/*.d $(1)/*/*/*.d)
endef

$(eval $(call VARIANT,build/obj,build,))
$(eval $(call VARIANT,build/asan-obj,build/asan,$(SAN_FLAGS)))
$(eval $(call VARIANT,build/tsan-obj,build/tsan,$(TSAN_FLAGS)))

build/libemaclient.so: $(CLIENT_SRC:%.c=build/obj/%.o) $(PROTO_SRC:%.c=build/obj/%.o) client/emaclient.map
	$(CC) -shared -Wl,-soname,libemaclient.so.$(SOVERSION) \
	    -Wl,--version-script=client/emaclient.map -Wl,--no-undefined \
	    -o $@ $(filter %.o,$^) $(shell $(PKG_CONFIG) --libs msgpack) -lm

build/emaclient.pc: client/emaclient.pc.in
	@mkdir -p $(@D)
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' \
	    -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' -e 's|@VERSION@|$(VERSION)|' $< > $@

# Always regenerated: BINDIR may differ from one make invocation to the next.
build/systemd/%: systemd/% FORCE
	@mkdir -p $(@D)
	sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@EMAD_USER@|$(EMAD_USER)|g' $< > $@

UNITS := emad.service emad.socket
USER_UNITS := emad-user.service emad-user.socket

# Every test in three builds: plain, ASan+UBSan, and ThreadSanitizer (the
# worker pool and everything around it).
# The integration tests themselves are single-threaded: under TSan only emad
# and emactl are instrumented, driven by the plain test binaries.
TESTS := $(foreach v,build build/asan,$(TEST_SRC:%.c=$(v)/%) $(ITEST_SRC:%.c=$(v)/%)) \
         $(TEST_SRC:%.c=build/tsan/%)
tests: all build/asan/emad build/asan/emactl build/tsan/emad build/tsan/emactl $(TESTS)

# test_durable's LD_PRELOAD shim (EIO or a stall on chosen files). Built once, plain: it is
# preloaded into the emad of every variant.
build/tests/integration/eio_shim.so: tests/integration/eio_shim.c
	@mkdir -p $(@D)
	$(CC) -std=gnu11 $(WARNINGS) -D_GNU_SOURCE -fPIC -shared $(CFLAGS) -o $@ $< -ldl
tests: build/tests/integration/eio_shim.so

# Fuzzing (tests/fuzz/README): libFuzzer harnesses built with clang, the
# sources they exercise compiled straight into each binary (not the gcc-built
# archives). `make fuzz FUZZ_SECONDS=300` runs each on a copy of its corpus in
# build/fuzz/; `make fuzz-check` (also run by tests/run) runs each briefly
# over its seeds; `make fuzz-corpus` regenerates the seeds.
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 60
FUZZ_FLAGS   := -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
                -fno-omit-frame-pointer -g -O1
FUZZERS      := build/fuzz/fuzz_wire build/fuzz/fuzz_dispatch build/fuzz/fuzz_safetensors
FUZZERS      += build/fuzz/fuzz_jtree
FUZZ_HDRS     = $(wildcard proto/*.h daemon/*.h)
tests: $(FUZZERS)

build/fuzz/fuzz_wire: tests/fuzz/fuzz_wire.c $(PROTO_SRC) $(FUZZ_HDRS)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(BASE_CFLAGS) $(FUZZ_FLAGS) -o $@ $(filter %.c,$^) $(DEPS_LIBS)

build/fuzz/fuzz_dispatch: tests/fuzz/fuzz_dispatch.c $(PROTO_SRC) $(DAEMON_SRC) $(FUZZ_HDRS)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(BASE_CFLAGS) $(HTTPD_CFLAGS) $(FUZZ_FLAGS) -o $@ $(filter %.c,$^) $(DEPS_LIBS) $(HTTPD_LIBS)

build/fuzz/fuzz_safetensors: tests/fuzz/fuzz_safetensors.c proto/safetensors.c proto/durable.c \
                             proto/names.c proto/dtype.c proto/errbuf.c $(FUZZ_HDRS)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(BASE_CFLAGS) $(FUZZ_FLAGS) -o $@ $(filter %.c,$^)

build/fuzz/fuzz_jtree: tests/fuzz/fuzz_jtree.c proto/jtree.c proto/names.c proto/errbuf.c \
                       $(FUZZ_HDRS)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(BASE_CFLAGS) $(FUZZ_FLAGS) -o $@ $(filter %.c,$^)

build/fuzz/gen_corpus: tests/fuzz/gen_corpus.c proto/wire.c proto/msg.c proto/names.c
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) $(CFLAGS) -o $@ $(filter %.c,$^) $(DEPS_LIBS)

fuzz: $(FUZZERS)
	@tests/fuzz/run fuzz $(FUZZ_SECONDS)

fuzz-check: $(FUZZERS)
	@tests/fuzz/run check

fuzz-corpus: build/fuzz/gen_corpus
	build/fuzz/gen_corpus tests/fuzz/corpus

# Benchmarks (tests/bench/run): no assertions, every figure beside a baseline measured in
# the same run. -O3 so that the plain-loop baseline is as fast as the compiler can make it.
BENCH_SRC := $(wildcard tests/bench/*.c)
build/bench/emabench: $(BENCH_SRC) tests/bench/bench.h build/libemaclient.a build/libemad.a build/libproto.a
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) -O3 -g -o $@ $(BENCH_SRC) build/libemaclient.a build/libemad.a build/libproto.a $(DEPS_LIBS)
tests: build/bench/emabench

bench: all build/bench/emabench
	tests/bench/run

bench-quick: all build/bench/emabench
	tests/bench/run --quick

# Soak test (tests/soak/soak.c, see tests/soak/README): `make soak` runs the full
# soak (16 trainers x 1000 batches, a trainer and emad SIGKILLed midway);
# `make soak-quick` runs the short one (4 x 100) against the plain and the
# ASan+UBSan emad, as tests/run does (with the TSan emad too) in `make check`.
build/soak: tests/soak/soak.c build/libemaclient.a build/libproto.a
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) $(CFLAGS) -o $@ $< build/libemaclient.a build/libproto.a $(DEPS_LIBS)

build/asan/soak: tests/soak/soak.c build/asan/libemaclient.a build/asan/libproto.a
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) $(CFLAGS) $(SAN_FLAGS) -o $@ $< build/asan/libemaclient.a build/asan/libproto.a $(DEPS_LIBS)

tests: build/soak build/asan/soak

.PHONY: soak soak-quick
soak: all build/soak
	build/soak

soak-quick: all build/asan/emad build/asan/emactl build/soak build/asan/soak
	build/soak --quick
	EMAD_BIN=build/asan/emad EMACTL_BIN=build/asan/emactl build/asan/soak --quick

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
	mkdir -p build; \
	echo "make deps: installing Debian packages:$$missing"; \
	echo "make deps: on a fresh Debian 12 that is about 430 MB to download (PyTorch and NumPy"; \
	echo "make deps: for the demo and the tests, clang for the fuzzers, matplotlib for the"; \
	echo "make deps: benchmark plot, the C libraries emad builds on); apt's output: build/deps.log"; \
	if ! { apt-get -qq update && DEBIAN_FRONTEND=noninteractive apt-get -qq install -y \
	        --no-install-recommends $$missing; } > build/deps.log 2>&1; then \
	    tail -n 40 build/deps.log >&2; \
	    echo "make deps: apt-get failed; its whole output is in build/deps.log" >&2; \
	    exit 1; \
	fi; \
	echo "make deps: done"

check: deps
	@$(MAKE) --no-print-directory check-run

check-run: tests
	@tests/run

demo: deps
	@$(MAKE) --no-print-directory all
	@client/demo.sh build

install: all build/emaclient.pc $(addprefix build/systemd/,$(UNITS) $(USER_UNITS))
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR) \
	    $(DESTDIR)$(PKGCONFIGDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(USERUNITDIR) \
	    $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man8
	install -m 0755 build/emad build/emactl $(DESTDIR)$(BINDIR)/
	install -m 0644 build/libemaclient.a $(DESTDIR)$(LIBDIR)/
	install -m 0755 build/libemaclient.so $(DESTDIR)$(LIBDIR)/libemaclient.so.$(VERSION)
	ln -sf libemaclient.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libemaclient.so.$(SOVERSION)
	ln -sf libemaclient.so.$(SOVERSION) $(DESTDIR)$(LIBDIR)/libemaclient.so
	install -m 0644 client/emaclient.h client/emacheckpoint.h $(DESTDIR)$(INCLUDEDIR)/
	install -m 0644 build/emaclient.pc $(DESTDIR)$(PKGCONFIGDIR)/
	install -m 0644 build/systemd/emad.service build/systemd/emad.socket $(DESTDIR)$(UNITDIR)/
	install -m 0644 build/systemd/emad-user.service $(DESTDIR)$(USERUNITDIR)/emad.service
	install -m 0644 build/systemd/emad-user.socket $(DESTDIR)$(USERUNITDIR)/emad.socket
	install -d $(DESTDIR)$(PYTHONDIR)/emaclient
	install -m 0644 $(PY_PACKAGE) $(DESTDIR)$(PYTHONDIR)/emaclient/
	ln -sf $(LIBDIR)/libemaclient.so.$(SOVERSION) \
	    $(DESTDIR)$(PYTHONDIR)/emaclient/libemaclient.so.$(SOVERSION)
	install -m 0644 docs/man/emad.8 $(DESTDIR)$(MANDIR)/man8/
	install -m 0644 docs/man/emactl.1 $(DESTDIR)$(MANDIR)/man1/

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/emad $(DESTDIR)$(BINDIR)/emactl \
	    $(DESTDIR)$(LIBDIR)/libemaclient.a $(DESTDIR)$(LIBDIR)/libemaclient.so \
	    $(DESTDIR)$(LIBDIR)/libemaclient.so.$(SOVERSION) \
	    $(DESTDIR)$(LIBDIR)/libemaclient.so.$(VERSION) \
	    $(DESTDIR)$(INCLUDEDIR)/emaclient.h $(DESTDIR)$(INCLUDEDIR)/emacheckpoint.h \
	    $(DESTDIR)$(PKGCONFIGDIR)/emaclient.pc \
	    $(DESTDIR)$(UNITDIR)/emad.service $(DESTDIR)$(UNITDIR)/emad.socket \
	    $(DESTDIR)$(USERUNITDIR)/emad.service $(DESTDIR)$(USERUNITDIR)/emad.socket \
	    $(DESTDIR)$(MANDIR)/man8/emad.8 $(DESTDIR)$(MANDIR)/man1/emactl.1
	rm -rf $(DESTDIR)$(PYTHONDIR)/emaclient

# The Debian package (packaging in systemd/debian/): built with debhelper from
# a copy of the tree in build/deb/emad-$(VERSION)/, so that the top level keeps
# no debian/ directory and the build never touches the checkout's build/.
# The copy holds the files git tracks, and those it would add (not ignored).
DEB_VERSION = $(shell dpkg-parsechangelog -l systemd/debian/changelog -S Version)
DEB_ARCH    = $(shell dpkg-architecture -q DEB_HOST_ARCH)
DEB_FILE    = build/deb/emad_$(DEB_VERSION)_$(DEB_ARCH).deb
.PHONY: deb
deb:
	@case "$(DEB_VERSION)" in $(VERSION)-*) ;; *) \
	    echo "make deb: systemd/debian/changelog is at $(DEB_VERSION), the Makefile's" \
	        "VERSION is $(VERSION): add a changelog entry (dch -v $(VERSION)-1)" >&2; exit 1;; esac
	rm -rf build/deb
	mkdir -p build/deb/emad-$(VERSION)
	if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
	    git ls-files -z --cached --others --exclude-standard | xargs -0 sh -c \
	        'for f; do [ ! -e "$$f" ] || cp --parents -t "$$0" "$$f" || exit 1; done' \
	        build/deb/emad-$(VERSION); \
	else \
	    cp -R --parents -t build/deb/emad-$(VERSION) Makefile README.md client daemon \
	        docs proto systemd tests; \
	fi
	cp -R systemd/debian build/deb/emad-$(VERSION)/debian
	cd build/deb/emad-$(VERSION) && dpkg-buildpackage -us -uc -b -Jauto
	@echo "make deb: $(DEB_FILE)"

clean:
	rm -rf build
