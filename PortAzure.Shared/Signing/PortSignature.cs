using System.Buffers;
using System.Buffers.Text;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;

namespace PortAzure.Signing;

/// <summary>
/// Port's webhook signatures. Current scheme ("v1"): HMAC-SHA256 over <c>"{timestamp}." + body</c>,
/// Base64, sent as <c>v1,&lt;base64&gt;</c>. Legacy scheme: HMAC-SHA1 of the body, hex.
/// </summary>
public static class PortSignature
{
    public const string TimestampHeader = "X-Port-Timestamp";
    public const string SignatureHeader = "X-Port-Signature";
    public const string VersionPrefix = "v1,";

    private const int Sha256Length = 32;
    private const int Base64Length = 44;
    private const int Sha1Length = 20;
    private const int StackallocLimit = 4096;

    /// <summary>Computes the header value <c>v1,&lt;base64&gt;</c> for a timestamp and body.</summary>
    public static string ComputeV1(string secret, string timestamp, ReadOnlySpan<byte> body)
    {
        ArgumentNullException.ThrowIfNull(secret);
        ArgumentNullException.ThrowIfNull(timestamp);
        Span<byte> mac = stackalloc byte[Sha256Length];
        HashV1Content(Encoding.UTF8.GetBytes(secret), timestamp, body, mac);
        return VersionPrefix + Convert.ToBase64String(mac);
    }

    /// <summary>
    /// Checks a <c>v1</c> header value (one or more space-separated signatures, as Standard Webhooks
    /// allows) against every secret given, in constant time per comparison.
    /// </summary>
    public static bool VerifyV1(string headerValue, string timestamp, ReadOnlySpan<byte> body, IReadOnlyList<byte[]> secrets)
    {
        ArgumentNullException.ThrowIfNull(headerValue);
        ArgumentNullException.ThrowIfNull(timestamp);
        ArgumentNullException.ThrowIfNull(secrets);
        Span<byte> mac = stackalloc byte[Sha256Length];
        Span<byte> expected = stackalloc byte[Base64Length];
        Span<byte> received = stackalloc byte[Base64Length];
        var matched = false;
        foreach (var secret in secrets)
        {
            HashV1Content(secret, timestamp, body, mac);
            // Compare the Base64 text, not decoded bytes: a decoder ignores the padding bits, so
            // several spellings would decode to one MAC. Only the canonical one is accepted.
            Base64.EncodeToUtf8(mac, expected, out _, out _);
            foreach (var range in headerValue.AsSpan().Split(' '))
            {
                var candidate = headerValue.AsSpan(range).Trim();
                if (!candidate.StartsWith(VersionPrefix, StringComparison.Ordinal) || candidate.Length != VersionPrefix.Length + Base64Length)
                {
                    continue;
                }
                // A character above 0x7F is no Base64 at all; cast to a byte, its low half could pass for one.
                var ascii = true;
                for (var i = 0; i < Base64Length; i++)
                {
                    var c = candidate[VersionPrefix.Length + i];
                    ascii &= c <= 0x7F;
                    received[i] = (byte)c;
                }
                if (!ascii)
                {
                    continue;
                }
                // Keep comparing after a match: the time taken must not depend on which one matched.
                matched |= CryptographicOperations.FixedTimeEquals(expected, received);
            }
        }
        return matched;
    }

    /// <summary>True when the header carries at least one signature with the <c>v1,</c> prefix.</summary>
    public static bool HasV1Signature(string headerValue) =>
        headerValue.Split(' ', StringSplitOptions.RemoveEmptyEntries).Any(s => s.StartsWith(VersionPrefix, StringComparison.Ordinal));

    /// <summary>Legacy scheme: hex HMAC-SHA1 of the body (optionally <c>sha1=</c>-prefixed), any case.</summary>
    public static bool VerifyLegacySha1(string headerValue, ReadOnlySpan<byte> body, IReadOnlyList<byte[]> secrets)
    {
        ArgumentNullException.ThrowIfNull(headerValue);
        ArgumentNullException.ThrowIfNull(secrets);
        var hex = headerValue.AsSpan().Trim();
        if (hex.StartsWith("sha1=", StringComparison.OrdinalIgnoreCase))
        {
            hex = hex[5..];
        }
        if (hex.Length != Sha1Length * 2)
        {
            return false;
        }
        Span<byte> received = stackalloc byte[Sha1Length];
        if (Convert.FromHexString(hex, received, out _, out var written) != OperationStatus.Done || written != Sha1Length)
        {
            return false;
        }
        Span<byte> expected = stackalloc byte[Sha1Length];
        var matched = false;
        foreach (var secret in secrets)
        {
            // SHA-1 is what Azure DevOps (and Port's legacy scheme) checks; the choice is not ours.
            #pragma warning disable CA5350
            HMACSHA1.HashData(secret, body, expected);
            #pragma warning restore CA5350
            matched |= CryptographicOperations.FixedTimeEquals(expected, received);
        }
        return matched;
    }

    /// <summary>
    /// The SHA-256 of what a <c>v1</c> signature covers, <c>"{timestamp}." + body</c>: a name for the signed call
    /// itself, whatever its path or unsigned headers.
    /// </summary>
    public static void HashSignedContent(string timestamp, ReadOnlySpan<byte> body, Span<byte> destination)
    {
        ArgumentNullException.ThrowIfNull(timestamp);
        HashV1Content(null, timestamp, body, destination);
    }

    /// <summary>HMAC-SHA256 under <paramref name="secret"/>, or plain SHA-256 without one, of <c>"{timestamp}." + body</c>.</summary>
    private static void HashV1Content(byte[]? secret, string timestamp, ReadOnlySpan<byte> body, Span<byte> destination)
    {
        // One-shot over one buffer: an IncrementalHash per call allocates a native HMAC context and its
        // handle for three appends (296 against 32 B per verification, docs/benchmarks.md).
        var length = timestamp.Length + 1 + body.Length;
        var rented = length <= StackallocLimit ? null : ArrayPool<byte>.Shared.Rent(length);
        Span<byte> message = rented is null ? stackalloc byte[length] : rented;
        try
        {
            var written = Encoding.ASCII.GetBytes(timestamp, message);
            message[written++] = (byte)'.';
            body.CopyTo(message[written..]);
            if (secret is null)
            {
                SHA256.HashData(message[..(written + body.Length)], destination);
            }
            else
            {
                HMACSHA256.HashData(secret, message[..(written + body.Length)], destination);
            }
        }
        finally
        {
            if (rented is not null)
            {
                // The body can carry a run's inputs: the next renter must not find them.
                ArrayPool<byte>.Shared.Return(rented, clearArray: true);
            }
        }
    }

    /// <summary>Parses a Unix-seconds timestamp as Port sends it (decimal digits only).</summary>
    public static bool TryParseTimestamp(string? value, out DateTimeOffset timestamp)
    {
        timestamp = default;
        if (string.IsNullOrEmpty(value) || value.Length > 12 || !value.All(char.IsAsciiDigit))
        {
            return false;
        }
        var seconds = long.Parse(value, NumberStyles.None, CultureInfo.InvariantCulture);
        if (seconds > DateTimeOffset.MaxValue.ToUnixTimeSeconds())
        {
            return false;
        }
        timestamp = DateTimeOffset.FromUnixTimeSeconds(seconds);
        return true;
    }
}
