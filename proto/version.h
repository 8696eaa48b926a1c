/* version.h - the package version, shared by emad, emactl and libemaclient. */
#ifndef EMAD_VERSION_H
#define EMAD_VERSION_H
#define EMAD_VERSION "0.1.0"
#endif
