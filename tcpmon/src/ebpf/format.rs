//! Classic tracepoints' format files (`/sys/kernel/tracing/events/CATEGORY/NAME/format`):
//! where each field of a trace record is on the running kernel. The kernel programs read
//! fixed offsets; a hook is attached only when this kernel puts every field it reads
//! where it expects, so a kernel with another layout gets a note, not wrong figures.
use std::{fs, path::Path};

/// One field of a trace record: its name, offset and size in bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: usize,
    pub size: usize,
}

/// The fields of a format file's text, in order; lines that are not fields are skipped.
pub fn parse(text: &str) -> Vec<Field> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let declaration = line.strip_prefix("field:")?;
            let (declaration, rest) = declaration.split_once(';')?;
            // "const void * skaddr", "__u8 saddr[4]", "enum sk_rst_reason reason"
            let name = declaration
                .rsplit(|c: char| c.is_whitespace() || c == '*')
                .next()?
                .split('[')
                .next()?
                .to_owned();
            let number = |key: &str| -> Option<usize> {
                rest.split(';')
                    .find_map(|part| part.trim().strip_prefix(key))?
                    .trim()
                    .parse()
                    .ok()
            };
            Some(Field {
                name,
                offset: number("offset:")?,
                size: number("size:")?,
            })
        })
        .collect()
}

/// Whether every `(name, offset)` in `expected` is where `fields` put it; the first that
/// is not, said.
pub fn matches(fields: &[Field], expected: &[(&str, usize)]) -> Result<(), String> {
    for (name, offset) in expected {
        match fields.iter().find(|f| f.name == *name) {
            None => return Err(format!("this kernel's record has no field {name}")),
            Some(f) if f.offset != *offset => {
                return Err(format!(
                    "field {name} is at offset {} on this kernel, not {offset}",
                    f.offset
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The fields of `category:name`'s format file (tracefs at either of its mount points).
pub fn read(category: &str, name: &str) -> Result<Vec<Field>, String> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .find_map(|root| {
            let path = Path::new(root)
                .join("events")
                .join(category)
                .join(name)
                .join("format");
            fs::read_to_string(path).ok()
        })
        .map(|text| parse(&text))
        .ok_or_else(|| format!("no format file for {category}:{name}"))
}

/// Reads the format file of `category:name` and checks it against `expected`.
pub fn check(category: &str, name: &str, expected: &[(&str, usize)]) -> Result<(), String> {
    matches(&read(category, name)?, expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEND_RESET: &str = "name: tcp_send_reset
ID: 1500
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;
\tfield:enum sk_rst_reason reason;\toffset:28;\tsize:4;\tsigned:0;
\tfield:__u8 saddr[28];\toffset:32;\tsize:28;\tsigned:0;
\tfield:__u8 daddr[28];\toffset:60;\tsize:28;\tsigned:0;

print fmt: \"skbaddr=%p\", REC->skbaddr
";

    #[test]
    fn fields_are_named_and_placed() {
        let fields = parse(SEND_RESET);
        let find = |name: &str| fields.iter().find(|f| f.name == name).cloned();
        assert_eq!(
            find("skaddr"),
            Some(Field {
                name: "skaddr".into(),
                offset: 16,
                size: 8
            })
        );
        assert_eq!(find("saddr").map(|f| (f.offset, f.size)), Some((32, 28)));
        assert_eq!(find("reason").map(|f| f.offset), Some(28));
        assert_eq!(fields.len(), 8);
        assert_eq!(
            matches(&fields, &tcpmon_common::tracepoints::send_reset::FIELDS),
            Ok(())
        );
    }

    #[test]
    fn another_layout_is_refused_with_the_field_that_moved() {
        // An older kernel: the addresses as in tcp_retransmit_skb, no sockaddr.
        let older = SEND_RESET.replace("offset:32;\tsize:28", "offset:34;\tsize:4");
        let err = matches(
            &parse(&older),
            &tcpmon_common::tracepoints::send_reset::FIELDS,
        )
        .unwrap_err();
        assert_eq!(err, "field saddr is at offset 34 on this kernel, not 32");
        let err = matches(&parse("format:\n"), &[("skaddr", 8)]).unwrap_err();
        assert!(err.contains("no field skaddr"), "{err}");
    }

    /// The running kernel's files hold what the programs read.
    #[test]
    fn this_kernels_failure_tracepoints_fit_the_programs() {
        use tcpmon_common::tracepoints::{receive_reset, retransmit_skb, send_reset};
        if !Path::new("/sys/kernel/tracing/events/tcp").exists() {
            return;
        }
        assert_eq!(
            check("tcp", "tcp_retransmit_skb", &retransmit_skb::FIELDS),
            Ok(())
        );
        assert_eq!(check("tcp", "tcp_send_reset", &send_reset::FIELDS), Ok(()));
        assert_eq!(
            check("tcp", "tcp_receive_reset", &receive_reset::FIELDS),
            Ok(())
        );
    }
}
