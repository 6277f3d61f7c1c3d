from data_prep.redact import redact

AWS = "AKIAIOSFODNN7EXAMPLE"
KEY_BLOCK = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7bq9\nq0x7Zr+abc==\n-----END RSA PRIVATE KEY-----"


def test_aws_key_and_private_key_block_are_replaced_and_counted():
    text = f'KEY_ID = "{AWS}"\nPEM = """\n{KEY_BLOCK}\n"""\n'
    out, counts = redact(text)
    assert AWS not in out and "MIIEowIBAAKCAQEA7bq9" not in out
    assert "<AWS_ACCESS_KEY_ID>" in out and "<PRIVATE_KEY>" in out
    assert counts["AWS_ACCESS_KEY_ID"] == 1 and counts["PRIVATE_KEY"] == 1


def test_password_assignment_keeps_the_name_and_hides_the_value():
    out, counts = redact('db_password = "hunter2hunter2"\nconfig = {"api_key": \'abcd1234efgh\'}\n')
    assert "hunter2" not in out and "abcd1234efgh" not in out
    assert 'db_password = "<SECRET>"' in out
    assert counts["SECRET"] == 2


def test_emails_and_public_ips_are_redacted_private_ips_kept():
    out, counts = redact("# contact jane.doe@example.com\nHOST = '8.8.8.8'\nLOCAL = '127.0.0.1'\nLAN = '192.168.1.20'\n")
    assert "jane.doe@example.com" not in out and "8.8.8.8" not in out
    assert "127.0.0.1" in out and "192.168.1.20" in out
    assert counts == {"EMAIL": 1, "IP_ADDRESS": 1}


def test_ordinary_code_is_untouched():
    code = "@property\ndef key(self):\n    return self._key  # version 1.2.3\n\ntoken = next(tokens)\n"
    out, counts = redact(code)
    assert out == code and not counts


def test_github_and_hf_tokens():
    gh = "ghp_" + "a1B2" * 9
    hf = "hf_" + "x9Y8" * 8
    out, counts = redact(f"T1 = '{gh}'\nT2 = '{hf}'\n")
    assert gh not in out and hf not in out
    assert counts["GITHUB_TOKEN"] == 1 and counts["HF_TOKEN"] == 1
