using System.Buffers;
using System.Security.Cryptography;
using System.Text;

namespace PortAzure.AzureDevOpsEmulator.Webhooks;

internal enum SignatureCheck
{
    Missing,
    Mismatch,
    Valid,
}

/// <summary>
/// Azure DevOps' incoming-webhook check: HMAC-SHA1 of the exact body bytes, keyed with the UTF-8
/// secret, written as hex (any case; Microsoft documents uppercase) or as <c>sha1=&lt;hex&gt;</c>.
/// Deliberately independent of PortAzure.Shared so that the emulator is a test oracle.
/// </summary>
internal static class WebhookSignature
{
    private const int MacLength = 20;
    private const string Prefix = "sha1=";

    public static SignatureCheck Verify(string? header, string secret, ReadOnlySpan<byte> body)
    {
        if (string.IsNullOrWhiteSpace(header))
        {
            return SignatureCheck.Missing;
        }

        var hex = header.AsSpan().Trim();
        if (hex.StartsWith(Prefix, StringComparison.OrdinalIgnoreCase))
        {
            hex = hex[Prefix.Length..];
        }

        Span<byte> claimed = stackalloc byte[MacLength];
        if (hex.Length != MacLength * 2 ||
            Convert.FromHexString(hex, claimed, out _, out var written) != OperationStatus.Done ||
            written != MacLength)
        {
            return SignatureCheck.Mismatch;
        }

        Span<byte> expected = stackalloc byte[MacLength];
#pragma warning disable CA5350 // HMAC-SHA1 is what Azure DevOps checks; the emulator must do the same.
        HMACSHA1.HashData(Encoding.UTF8.GetBytes(secret), body, expected);
#pragma warning restore CA5350
        return CryptographicOperations.FixedTimeEquals(claimed, expected) ? SignatureCheck.Valid : SignatureCheck.Mismatch;
    }
}
