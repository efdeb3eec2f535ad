using PortAzure.Diagnostics;

namespace PortAzure.Tests.Diagnostics;

public class ExceptionMessagesTests
{
    [Fact]
    public void Of_InnerMessagesNotQuoted_JoinsEachOnce()
    {
        var error = new InvalidOperationException("outer.", new InvalidOperationException("inner.", new InvalidOperationException("outer.")));

        Assert.Equal("outer. inner.", ExceptionMessages.Of(error));
    }

    [Fact]
    public void Of_InnerArgumentMessageQuotedWithoutItsParameter_IsNotRepeated()
    {
        var refusal = new ArgumentOutOfRangeException("value", "Value must be a positive number.");
        var error = new InvalidOperationException("Kestrel:Limits:MaxRequestHeaderCount is out of range ('-1'): Value must be a positive number.", refusal);

        Assert.Equal("Kestrel:Limits:MaxRequestHeaderCount is out of range ('-1'): Value must be a positive number.", ExceptionMessages.Of(error));
    }

    [Fact]
    public void WithoutParameter_ArgumentException_DropsOnlyTheParameterNote()
    {
        Assert.Equal("Value must be a positive number.", ExceptionMessages.WithoutParameter(new ArgumentOutOfRangeException("value", "Value must be a positive number.")));
        Assert.Equal("Keyword 'x' is not supported.", ExceptionMessages.WithoutParameter(new ArgumentException("Keyword 'x' is not supported.")));
        Assert.Equal("not an argument (Parameter 'y')", ExceptionMessages.WithoutParameter(new InvalidOperationException("not an argument (Parameter 'y')")));
    }
}
