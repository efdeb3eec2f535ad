using PortAzure.Targets;

namespace PortAzure.Tests.Targets;

public class AzureDevOpsOptionsValidatorTests
{
    [Theory]
    [InlineData("Content-Type")] // a content header: never added to the request's headers, so the POST went unsigned
    [InlineData("content-md5")]
    [InlineData("Idempotency-Key")] // set by the relay itself
    [InlineData("X-Port-Run-Id")]
    [InlineData("traceparent")]
    [InlineData("Host")]
    [InlineData("Transfer-Encoding")]
    public void Validate_SignatureHeaderTheRelayOrHttpSets_IsRefusedNamingIt(string header)
    {
        var result = new AzureDevOpsOptionsValidator().Validate(null, new AzureDevOpsOptions { SignatureHeader = header });

        Assert.True(result.Failed);
        Assert.Contains($"AzureDevOps:SignatureHeader '{header}' is a header the relay or HTTP itself sets", result.FailureMessage, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("X-Port-Signature")]
    [InlineData("X-WH-Checksum")]
    [InlineData("X-Hub-Signature")]
    public void Validate_OtherSignatureHeader_IsAccepted(string header)
    {
        Assert.True(new AzureDevOpsOptionsValidator().Validate(null, new AzureDevOpsOptions { SignatureHeader = header }).Succeeded);
    }
}
