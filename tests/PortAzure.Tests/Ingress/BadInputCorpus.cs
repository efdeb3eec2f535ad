using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using PortAzure.Signing;
using PortAzure.Tests.Infrastructure;

namespace PortAzure.Tests.Ingress;

/// <summary>One row of <c>Data/bad-inputs.json</c>: a hostile or broken call and the answer it must get.</summary>
public sealed record BadInputCase(string Name, JsonElement Spec)
{
    public int Status => Spec.GetProperty("status").GetInt32();

    public string? Reason => Spec.TryGetProperty("reason", out var reason) ? reason.GetString() : null;

    /// <summary>Answered by Kestrel before any of our code runs: only the status is ours to check.</summary>
    public bool Kestrel => Spec.TryGetProperty("kestrel", out var kestrel) && kestrel.GetBoolean();

    public override string ToString() => Name;
}

/// <summary>Loads the corpus and turns a row into the exact bytes to send.</summary>
public static class BadInputCorpus
{
    public const string DefaultPath = "/" + TestRuns.Org + "/_apis/public/distributedtask/webhooks/" + TestRuns.Webhook + "?api-version=6.0-preview";

    private static readonly Lazy<IReadOnlyDictionary<string, BadInputCase>> Cases = new(Load);

    public static IReadOnlyDictionary<string, BadInputCase> All => Cases.Value;

    private static Dictionary<string, BadInputCase> Load()
    {
        using var document = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(AppContext.BaseDirectory, "Data", "bad-inputs.json")));
        var cases = new Dictionary<string, BadInputCase>(StringComparer.Ordinal);
        foreach (var spec in document.RootElement.GetProperty("cases").EnumerateArray())
        {
            var name = spec.GetProperty("name").GetString()!;
            if (!cases.TryAdd(name, new BadInputCase(name, spec.Clone())))
            {
                throw new InvalidOperationException($"Two corpus cases are named '{name}'.");
            }
        }
        return cases;
    }

    public static RawRequest Build(BadInputCase @case)
    {
        ArgumentNullException.ThrowIfNull(@case);
        var spec = @case.Spec;
        var method = spec.TryGetProperty("method", out var m) ? m.GetString()! : "POST";
        var target = spec.TryGetProperty("path", out var p) ? Generate(p) : Encoding.ASCII.GetBytes(DefaultPath);
        var body = spec.TryGetProperty("body", out var b) ? Generate(b) : TestRuns.Body(TestRuns.NewRunId());
        var framing = spec.TryGetProperty("framing", out var f)
            ? f.GetString() switch
            {
                "chunked" => RawFraming.Chunked,
                "none" => RawFraming.None,
                "content-length" => RawFraming.ContentLength,
                var other => throw new InvalidOperationException($"{@case.Name}: unknown framing '{other}'."),
            }
            : RawFraming.ContentLength;
        var chunkSize = spec.TryGetProperty("chunkSize", out var c) ? c.GetInt32() : 16 * 1024;

        var lines = new List<byte[]>();
        if (!spec.TryGetProperty("contentType", out var contentType))
        {
            lines.Add(RawRequest.HeaderLine("Content-Type", "application/json"));
        }
        else if (contentType.ValueKind == JsonValueKind.String)
        {
            lines.Add(RawRequest.HeaderLine("Content-Type", contentType.GetString()!));
        }
        if (!spec.TryGetProperty("sign", out var sign) || sign.GetBoolean())
        {
            lines.AddRange(SignatureHeaders(@case.Name, spec, body));
        }
        if (spec.TryGetProperty("headers", out var headers))
        {
            foreach (var header in headers.EnumerateArray())
            {
                if (header.TryGetProperty("line", out var line))
                {
                    lines.Add(Generate(line));
                    continue;
                }
                var name = header.GetProperty("name").GetString()!;
                var value = Generate(header.GetProperty("value"));
                var repeat = header.TryGetProperty("repeat", out var r) ? r.GetInt32() : 1;
                for (var i = 0; i < repeat; i++)
                {
                    lines.Add(RawRequest.HeaderLine(repeat == 1 ? name : $"{name}-{i}", value));
                }
            }
        }
        return new RawRequest(method, target, lines, body, framing, chunkSize);
    }

    private static IEnumerable<byte[]> SignatureHeaders(string name, JsonElement spec, byte[] body)
    {
        var now = DateTimeOffset.UtcNow;
        string? timestamp = now.ToUnixTimeSeconds().ToString(CultureInfo.InvariantCulture);
        if (spec.TryGetProperty("timestamp", out var ts))
        {
            if (ts.TryGetProperty("offsetSeconds", out var offset))
            {
                timestamp = now.AddSeconds(offset.GetInt32()).ToUnixTimeSeconds().ToString(CultureInfo.InvariantCulture);
            }
            else if (ts.TryGetProperty("literal", out var literal))
            {
                timestamp = literal.GetString()!;
            }
            else if (ts.TryGetProperty("milliseconds", out _))
            {
                timestamp = now.ToUnixTimeMilliseconds().ToString(CultureInfo.InvariantCulture);
            }
            else if (ts.TryGetProperty("omit", out _))
            {
                timestamp = null;
            }
        }
        // The signature covers whatever timestamp is sent, so only the rule under test is broken.
        var signedTimestamp = timestamp ?? now.ToUnixTimeSeconds().ToString(CultureInfo.InvariantCulture);
        var good = PortSignature.ComputeV1(TestRuns.Secret, signedTimestamp, body);
        string? signature = good;
        if (spec.TryGetProperty("signature", out var sig))
        {
            if (sig.TryGetProperty("literal", out var literal))
            {
                signature = literal.GetString()!;
            }
            else if (sig.TryGetProperty("omit", out _))
            {
                signature = null;
            }
            else if (sig.TryGetProperty("mutate", out var mutate))
            {
                var base64 = good[PortSignature.VersionPrefix.Length..];
                signature = mutate.GetString() switch
                {
                    "truncate" => good[..^6],
                    "noncanonical" => PortSignature.VersionPrefix + NonCanonical(base64),
                    "otherBody" => PortSignature.ComputeV1(TestRuns.Secret, signedTimestamp, TestRuns.Body(TestRuns.NewRunId())),
                    "otherSecret" => PortSignature.ComputeV1("not-the-secret", signedTimestamp, body),
                    "v2" => "v2," + base64,
                    "uppercasePrefix" => "V1," + base64,
                    "noPrefix" => base64,
                    "legacySha1" => Convert.ToHexString(HMACSHA1.HashData(Encoding.UTF8.GetBytes(TestRuns.Secret), body)),
                    "manyWrong" => string.Join(' ', Enumerable.Range(0, 500).Select(i => PortSignature.ComputeV1("wrong-" + i, signedTimestamp, body))),
                    var other => throw new InvalidOperationException($"{name}: unknown signature mutation '{other}'."),
                };
            }
        }
        if (timestamp is not null)
        {
            yield return RawRequest.HeaderLine(PortSignature.TimestampHeader, timestamp);
        }
        if (signature is not null)
        {
            yield return RawRequest.HeaderLine(PortSignature.SignatureHeader, signature);
        }
    }

    /// <summary>
    /// The same MAC spelt differently: 32 bytes leave two unused bits in the last Base64 digit before
    /// the '=', which decoders ignore. Setting them keeps the decoded bytes and changes the text.
    /// </summary>
    private static string NonCanonical(string base64)
    {
        const string alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        var chars = base64.ToCharArray();
        var last = chars.Length - 2;
        chars[last] = alphabet[alphabet.IndexOf(chars[last], StringComparison.Ordinal) | 0b11];
        return new string(chars);
    }

    /// <summary>Bytes from a generator: a string, {text}, {base64}, {repeat, count}, {concat}, {run: {runId}}.</summary>
    public static byte[] Generate(JsonElement gen)
    {
        if (gen.ValueKind == JsonValueKind.String)
        {
            return Encoding.UTF8.GetBytes(gen.GetString()!);
        }
        if (gen.TryGetProperty("text", out var text))
        {
            return Encoding.UTF8.GetBytes(text.GetString()!);
        }
        if (gen.TryGetProperty("base64", out var base64))
        {
            return Convert.FromBase64String(base64.GetString()!);
        }
        if (gen.TryGetProperty("repeat", out var repeat))
        {
            var unit = Generate(repeat);
            var count = gen.GetProperty("count").GetInt32();
            var result = new byte[unit.Length * count];
            for (var i = 0; i < count; i++)
            {
                unit.CopyTo(result, i * unit.Length);
            }
            return result;
        }
        if (gen.TryGetProperty("concat", out var parts))
        {
            return [.. parts.EnumerateArray().SelectMany(Generate)];
        }
        if (gen.TryGetProperty("run", out var run))
        {
            if (!run.TryGetProperty("runId", out var runId))
            {
                return TestRuns.Body(TestRuns.NewRunId());
            }
            var node = JsonNode.Parse(TestRuns.Body(TestRuns.NewRunId()))!;
            node["context"]!["runId"] = Encoding.UTF8.GetString(Generate(runId));
            return Encoding.UTF8.GetBytes(node.ToJsonString());
        }
        throw new InvalidOperationException("Unknown generator: " + gen.GetRawText());
    }
}
