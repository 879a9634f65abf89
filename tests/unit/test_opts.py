from oslo_config import cfg

from freezer_rsyncv2 import opts


def test_list_opts_names_every_option():
    [(group, options)] = opts.list_opts()
    assert group == "rsyncv2"
    names = {o.dest for o in options}
    assert {"compression", "encrypt_pass_file", "exclude",
            "dereference_symlink", "max_segment_size", "rsync_block_size",
            "max_level", "always_level", "restart_always_level"} <= names


def test_config_file_is_read(tmp_path):
    conf_file = tmp_path / "r.conf"
    conf_file.write_text("[rsyncv2]\ncompression = xz\nexclude = *.tmp,cache\n")
    conf = opts.load([str(conf_file)])
    assert conf.rsyncv2.compression == "xz"
    assert conf.rsyncv2.exclude == ["*.tmp", "cache"]


def test_registers_on_the_given_object_only():
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf([])
    assert conf.rsyncv2.compression == "zstd"
    assert "rsyncv2" not in cfg.CONF
