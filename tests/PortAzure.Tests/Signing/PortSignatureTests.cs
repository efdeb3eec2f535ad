using System.Text;
using PortAzure.Signing;
using PortAzure.Tests.Infrastructure;

namespace PortAzure.Tests.Signing;

public class PortSignatureTests
{
    private const string SampleSignature = "v1,Oosqg8Xv2SLWHVkJsY4TB+MogYVb3oebsg0gn/L26b8=";
    private static readonly byte[][] Secrets = [Encoding.UTF8.GetBytes(TestRuns.Secret)];

    [Fact]
    public void ComputeV1_SharedReferenceVector_MatchesPublishedSignature()
    {
        Assert.Equal(525, TestRuns.SampleBody.Length);
        Assert.Equal(SampleSignature, PortSignature.ComputeV1(TestRuns.Secret, "1763632800", TestRuns.SampleBody));
    }

    [Fact]
    public void VerifyV1_SharedReferenceVector_Accepts()
    {
        Assert.True(PortSignature.VerifyV1(SampleSignature, "1763632800", TestRuns.SampleBody, Secrets));
    }

    [Theory]
    [InlineData("v1,Oosqg8Xv2SLWHVkJsY4TB+MogYVb3oebsg0gn/L26b8=", "1763632801")]
    [InlineData("v1,Oosqg8Xv2SLWHVkJsY4TB+MogYVb3oebsg0gn/L26b9=", "1763632800")]
    [InlineData("v2,Oosqg8Xv2SLWHVkJsY4TB+MogYVb3oebsg0gn/L26b8=", "1763632800")]
    [InlineData("v1,Oosqg8Xv2SLWHVkJsY4TB+MogYVb3oebsg0gn/L26", "1763632800")]
    [InlineData("v1,", "1763632800")]
    [InlineData("Oosqg8Xv2SLWHVkJsY4TB+MogYVb3oebsg0gn/L26b8=", "1763632800")]
    public void VerifyV1_AlteredSignatureOrTimestamp_Rejects(string signature, string timestamp)
    {
        Assert.False(PortSignature.VerifyV1(signature, timestamp, TestRuns.SampleBody, Secrets));
    }

    // Sizes around the point where the message buffer moves from the stack to the pool (4,096 bytes with the timestamp).
    [Theory]
    [InlineData(0)]
    [InlineData(4085)]
    [InlineData(4086)]
    [InlineData(100_000)]
    public void ComputeV1_BodySizes_MatchesHmacOfTimestampDotBody(int size)
    {
        var body = new byte[size];
        new Random(size).NextBytes(body);
        using var reference = System.Security.Cryptography.IncrementalHash.CreateHMAC(
            System.Security.Cryptography.HashAlgorithmName.SHA256, Encoding.UTF8.GetBytes(TestRuns.Secret));
        reference.AppendData(Encoding.ASCII.GetBytes("1763632800."));
        reference.AppendData(body);

        var header = PortSignature.ComputeV1(TestRuns.Secret, "1763632800", body);

        Assert.Equal("v1," + Convert.ToBase64String(reference.GetHashAndReset()), header);
        Assert.True(PortSignature.VerifyV1(header, "1763632800", body, Secrets));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(4086)]
    [InlineData(100_000)]
    public void HashSignedContent_BodySizes_IsTheSha256OfTimestampDotBody(int size)
    {
        var body = new byte[size];
        new Random(size).NextBytes(body);
        Span<byte> hash = stackalloc byte[32];

        PortSignature.HashSignedContent("1763632800", body, hash);

        Assert.Equal(System.Security.Cryptography.SHA256.HashData([.. Encoding.ASCII.GetBytes("1763632800."), .. body]), hash.ToArray());
    }

    [Fact]
    public void VerifyV1_OneByteOfBodyChanged_Rejects()
    {
        var body = (byte[])TestRuns.SampleBody.Clone();
        body[10] ^= 1;
        Assert.False(PortSignature.VerifyV1(SampleSignature, "1763632800", body, Secrets));
    }

    [Fact]
    public void VerifyV1_ValidSignatureWithACharacterAbove0x7FWhoseLowByteMatches_Rejects()
    {
        // Kestrel reads header values as UTF-8: U+0100 + 'A' would become 'A' again in a cast to a byte.
        var last = SampleSignature[^1];
        var spoofed = SampleSignature[..^1] + (char)(0x100 + last);

        Assert.False(PortSignature.VerifyV1(spoofed, "1763632800", TestRuns.SampleBody, Secrets));
    }

    [Fact]
    public void VerifyV1_SeveralSignaturesOneValid_Accepts()
    {
        Assert.True(PortSignature.VerifyV1("v1,AAAA " + SampleSignature, "1763632800", TestRuns.SampleBody, Secrets));
    }

    [Fact]
    public void VerifyV1_PreviousSecretDuringRotation_Accepts()
    {
        byte[][] rotated = [Encoding.UTF8.GetBytes("new-secret"), Encoding.UTF8.GetBytes(TestRuns.Secret)];
        Assert.True(PortSignature.VerifyV1(SampleSignature, "1763632800", TestRuns.SampleBody, rotated));
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void VerifyLegacySha1_HexOfBodyHmac_AcceptsAnyCaseAndPrefix(bool prefixed)
    {
        var hex = Convert.ToHexString(System.Security.Cryptography.HMACSHA1.HashData(Secrets[0], TestRuns.SampleBody));
        Assert.True(PortSignature.VerifyLegacySha1(prefixed ? "sha1=" + hex.ToLowerInvariant() : hex, TestRuns.SampleBody, Secrets));
        Assert.False(PortSignature.VerifyLegacySha1(hex[..^1] + (hex[^1] == '0' ? '1' : '0'), TestRuns.SampleBody, Secrets));
    }

    [Theory]
    [InlineData("1763632800", true)]
    [InlineData("", false)]
    [InlineData("-1", false)]
    [InlineData("1.5", false)]
    [InlineData("abc", false)]
    [InlineData("99999999999999999999", false)]
    [InlineData(" 1763632800", false)]
    public void TryParseTimestamp_Inputs_ParsesOnlyDecimalUnixSeconds(string value, bool expected)
    {
        Assert.Equal(expected, PortSignature.TryParseTimestamp(value, out _));
    }
}
